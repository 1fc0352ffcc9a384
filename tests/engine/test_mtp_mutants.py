"""engine/mtp.py: cases that kill mutants the MTP tests let live (docs/mutation.md)."""

from __future__ import annotations

import mlx.core as mx

from engine.mtp import speculative_accept

V = 10


def _rows(*rows: dict[int, float]) -> mx.array:
    out = [[0.0] * V for _ in rows]
    for r, row in zip(out, rows, strict=True):
        for k, v in row.items():
            r[k] = v
    return mx.array(out)


def test_each_draft_is_judged_by_its_own_row() -> None:
    # Row j of p (and q) judges draft j: read from row 0, the second draft here would be rejected.
    p = _rows({5: 1.0}, {7: 1.0}, {2: 1.0})
    assert speculative_accept(p, None, [5, 7]) == (2, 2)
    p = _rows({5: 1.0}, {7: 0.01, 3: 0.99}, {2: 1.0})
    q = _rows({5: 0.02, 7: 0.98}, {7: 0.01, 3: 0.99})
    mx.random.seed(0)
    assert all(speculative_accept(p, q, [5, 7]) == (2, 2) for _ in range(20))


def test_no_drafts_samples_the_first_row() -> None:
    assert speculative_accept(_rows({4: 1.0}), None, []) == (0, 4)
