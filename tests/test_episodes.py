"""Episode sampling: distinct classes and images, uniform draws, a defined order for tied keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.episodes import (
    remap_labels,
    sample_episode_indices,
    sample_within_classes,
    smallest_keys,
    smallest_keys_sorting,
)


def test_smallest_keys_equal_a_stable_argsort_even_with_tied_keys() -> None:
    g = torch.Generator().manual_seed(0)
    for n, k in ((600, 10), (20, 20), (7, 3), (7, 1), (300, 64), (300, 65), (90, 80)):
        keys = torch.randint(0, 8, (50, n), generator=g).float() / 8  # many ties on purpose
        keys[:, -2:] = 2.0  # larger than every key, as past a class's size
        expected = keys.argsort(dim=1, stable=True)[:, :k]
        assert torch.equal(smallest_keys(keys, k), expected)  # the numba path for k <= 64
        assert torch.equal(smallest_keys_sorting(keys, k), expected)
        fresh = torch.rand(50, n, generator=g)
        assert torch.equal(smallest_keys(fresh, k), fresh.argsort(dim=1, stable=True)[:, :k])
    wide = torch.rand(2, (1 << 16) + 5, generator=g)  # past the float64 tie-break's range: sorts
    assert torch.equal(smallest_keys_sorting(wide, 4), wide.argsort(dim=1, stable=True)[:, :4])
    assert torch.equal(smallest_keys(wide, 4), wide.argsort(dim=1, stable=True)[:, :4])


def test_smallest_keys_ignore_keys_past_each_rows_length() -> None:
    g = torch.Generator().manual_seed(3)
    keys = torch.rand(40, 50, generator=g)
    lengths = torch.randint(12, 51, (40,), generator=g)
    masked = keys.masked_fill(torch.arange(50) >= lengths.unsqueeze(1), 2.0)
    expected = masked.argsort(dim=1, stable=True)[:, :12]
    assert torch.equal(smallest_keys(keys, 12, lengths), expected)
    assert torch.equal(smallest_keys(keys.double(), 12, lengths), expected)  # the sorting path
    assert bool((expected < lengths.unsqueeze(1)).all())


def test_episodes_have_distinct_classes_and_distinct_images_of_their_class() -> None:
    offsets = torch.tensor([0, 5, 12, 20, 26, 40])  # five classes of 5, 7, 8, 6, 14 images
    rows, classes = sample_episode_indices(offsets, 200, 3, 5, torch.Generator().manual_seed(1))
    assert rows.shape == (200, 3, 5) and classes.shape == (200, 3)
    for t in range(200):
        assert len(set(classes[t].tolist())) == 3
        for w in range(3):
            c = int(classes[t, w])
            r = rows[t, w]
            assert len(set(r.tolist())) == 5 and bool(((r >= offsets[c]) & (r < offsets[c + 1])).all())


def test_classes_and_images_are_drawn_uniformly() -> None:
    offsets = torch.tensor([0, 600, 1200, 1800, 2400, 3000, 3600, 4200, 4800])  # 8 classes of 600
    rows, classes = sample_episode_indices(offsets, 4000, 5, 10, torch.Generator().manual_seed(2))
    per_class = torch.bincount(classes.flatten(), minlength=8).double()
    expected = 4000 * 5 / 8
    assert ((per_class - expected).abs() / expected).max() < 0.03
    within = torch.bincount((rows - offsets[classes].unsqueeze(2)).flatten(), minlength=600).double()
    expected_img = 4000 * 5 * 10 / 600  # ~333 draws per image position
    assert ((within - expected_img).abs() / expected_img).max() < 0.25  # > 4 standard deviations
    first = torch.bincount(classes[:, 0], minlength=8).double()  # the way order is random too
    assert ((first - 500) / 500).abs().max() < 0.15


def test_the_same_generator_state_gives_the_same_episodes() -> None:
    offsets = torch.tensor([0, 30, 60, 90, 120])
    a = sample_episode_indices(offsets, 4, 3, 6, torch.Generator().manual_seed(9))
    b = sample_episode_indices(offsets, 4, 3, 6, torch.Generator().manual_seed(9))
    c = sample_episode_indices(offsets, 4, 3, 6, torch.Generator().manual_seed(10))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


def test_remap_labels_numbers_classes_in_order_of_first_appearance() -> None:
    local, ids = remap_labels(torch.tensor([7, 3, 7, 9, 3]))
    assert local.tolist() == [0, 1, 0, 2, 1] and ids.tolist() == [7, 3, 9]


def test_sample_within_classes_refuses_more_images_than_a_class_has() -> None:
    # class 0 has 3 images: 5 of them used to take rows 3 and 4 of class 1
    offsets = torch.tensor([0, 3, 10, 20])
    with pytest.raises(ValueError, match=r"per_class: expected 1 <= per_class <= 3 .*got 5"):
        sample_within_classes(offsets, torch.tensor([0, 0, 0]), 5, torch.Generator().manual_seed(0))
    rows = sample_within_classes(offsets, torch.tensor([1, 2]), 5, torch.Generator().manual_seed(0))
    assert bool((rows[0] >= 3).all() and (rows[0] < 10).all() and (rows[1] >= 10).all())


@pytest.mark.parametrize("classes", [[0, 3], [-1, 0]])
def test_sample_within_classes_refuses_class_ids_outside_the_split(classes: list[int]) -> None:
    with pytest.raises(ValueError, match=r"classes: expected ids in \[0, 3\)"):
        sample_within_classes(torch.tensor([0, 3, 10, 20]), torch.tensor(classes), 2, torch.Generator())


def test_smallest_keys_refuses_k_above_a_rows_length_on_both_paths() -> None:
    # used to return indices past the length, and the numba and sorting paths disagreed
    keys = torch.rand(1, 10, generator=torch.Generator().manual_seed(0))
    for k in (keys, keys.double()):  # the numba path, the sorting path
        with pytest.raises(ValueError, match=r"lengths: expected values in \[k=5, 10\].*min 3"):
            smallest_keys(k, 5, torch.tensor([3]))
    with pytest.raises(ValueError, match="max 11"):  # the numba loop would read past the row
        smallest_keys(keys, 2, torch.tensor([11]))


def test_episode_sampling_given_numpy_offsets_asks_for_a_torch_tensor() -> None:
    with pytest.raises(FsmtlError, match="class_offsets: expected a torch int64 tensor .*got a numpy array"):
        sample_episode_indices(np.array([0, 5, 10]), 1, 2, 2, torch.Generator())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got torch.int32"):
        sample_episode_indices(torch.tensor([0, 5, 10], dtype=torch.int32), 1, 2, 2, torch.Generator())


def test_one_call_episodes_equal_the_two_step_sampler_draw_for_draw() -> None:
    # sample_episode_indices selects classes and images in one numba call; it must give what
    # sample_classes then sample_within_classes give, and leave the generator at the same state
    from fsmtl.pipelines.episodes import sample_classes

    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        sizes = torch.randint(10, 40, (int(torch.randint(5, 30, (1,), generator=g)),), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
        t, n, k = (int(torch.randint(1, hi, (1,), generator=g)) for hi in (8, 5, 10))
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        rows, classes = sample_episode_indices(offsets, t, n, k, g1)
        want_classes = sample_classes(len(sizes), t, n, g2)
        want_rows = sample_within_classes(offsets, want_classes, k, g2)
        assert torch.equal(classes, want_classes) and torch.equal(rows, want_rows), seed
        assert torch.equal(g1.get_state(), g2.get_state())
    # past the numba buffer (k > 64) the two-step path runs: still distinct rows of the right class
    offsets = torch.tensor([0, 80, 170, 260])
    rows, classes = sample_episode_indices(offsets, 2, 3, 70, torch.Generator().manual_seed(0))
    for t in range(2):
        for j in range(3):
            c = int(classes[t, j])
            r = rows[t, j]
            assert r.unique().numel() == 70 and bool(((r >= offsets[c]) & (r < offsets[c + 1])).all())
