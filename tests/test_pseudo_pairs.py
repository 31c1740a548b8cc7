"""Inter-subject pseudo-pairs: affine alignment, teacher fields kept where cycle-consistent, mixed into the stream."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset, list_data_collate
from monai.transforms import Compose
from torch.utils.data import default_collate
from test_bundles import REPO, TINY, bundle

from cover3d.data import InterSubjectPseudoPairs, MixedPairs, StreamDataset
from cover3d.metrics import cycle_consistent_field
from cover3d.errors import InputFileNotFoundError
from cover3d.metrics import global_ncc
from cover3d.networks import CoverNet
from cover3d.transforms import CoverPaird, affine_align, foreground_mask, mri_preprocessing

CHANNELS = (4, 4, 8, 8, 8)


def blob(shape, centre, radii) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    c, r = torch.tensor(centre)[:, None, None, None], torch.tensor(radii)[:, None, None, None]
    return ((((grid - c) / r) ** 2).sum(0) < 1).float()


def subject(shape, shift=(0.0, 0.0, 0.0), scale=1.0) -> torch.Tensor:
    """A bright ellipsoid with a dimmer inner one, moved by ``shift`` voxels and scaled by ``scale``: ``(1, *shape)``."""
    centre = [s / 2 + d for s, d in zip(shape, shift)]
    inner = [c - 0.2 * s for c, s in zip(centre, shape)]
    outer = blob(shape, centre, [scale * 0.3 * s for s in shape])
    return (0.8 * outer + 0.2 * blob(shape, inner, [scale * 0.1 * s for s in shape]))[None]


def test_affine_align_recovers_a_shifted_scaled_subject():
    fixed = subject((48, 40, 32))
    moving = subject((48, 40, 32), shift=(4.0, -3.0, 2.0), scale=1.12)
    aligned = affine_align(moving, fixed)
    assert aligned.shape == fixed.shape
    before, after = global_ncc(moving, fixed), global_ncc(aligned, fixed)
    assert before < 0.7 and after > 0.93, (before, after)


def pseudo_setup(tmp_path):
    torch.manual_seed(0)
    network = CoverNet(1, CHANNELS)
    weights = tmp_path / "teacher.pt"
    torch.save(network.state_dict(), weights)
    pair = CoverPaird("image", patch_size=(32, 32, 16), context_size=(40, 40, 24), reach=network.reach,
                      background_threshold=0.05)
    shifts = [(0.0, 0.0, 0.0), (3.0, -2.0, 1.0), (-2.0, 3.0, -1.0)]
    volumes = [{"image": subject((44, 40, 24), shift, 1.0 + 0.05 * i)} for i, shift in enumerate(shifts)]
    return network, weights, pair, volumes


def test_pseudo_pairs_are_the_teachers_cycle_consistent_fields_and_batch_with_synthetic_pairs(tmp_path):
    network, weights, pair, volumes = pseudo_setup(tmp_path)
    strict = InterSubjectPseudoPairs(volumes, network, str(weights), pair, num_pairs=2, threshold=12.0, seed=3)  # median residual of this untrained teacher
    loose = InterSubjectPseudoPairs(volumes, network, str(weights), pair, num_pairs=2, threshold=1e6, seed=3)
    assert len(strict) == 2 and 0 < strict.kept_fraction < loose.kept_fraction
    item = loose[0]
    field = cycle_consistent_field(network, item["image"][None], item["image_b"][None], threshold=1e6)
    assert torch.allclose(item["ddf"], field["ddf"][0], atol=1e-5) and torch.equal(item["mask"], field["mask"][0])
    assert not torch.equal(item["image"], item["image_b"])  # two different subjects
    assert type(item["image"]) is torch.Tensor  # plain tensors, like the synthetic pairs

    synthetic = Dataset([dict(v) for v in volumes], pair)
    reference = synthetic[0]
    assert sorted(item) == sorted(reference)
    assert all(item[k].shape == torch.as_tensor(reference[k]).shape for k in ("image", "image_b", "ddf", "mask"))
    default_collate([reference, item])  # one batch may hold both kinds

    mixed = StreamDataset(MixedPairs(synthetic, loose), seed=1)
    assert len(mixed) == 5
    drawn = [mixed.volume_index(p) for p in range(10)]
    assert sorted(set(drawn)) == [0, 1, 2, 3, 4]  # synthetic volumes and pseudo-pairs in one stream
    p = drawn.index(0)
    assert torch.equal(torch.as_tensor(mixed[drawn.index(3)]["ddf"]), loose[0]["ddf"])
    got = mixed[p]  # a synthetic draw is seeded as in a stream without the extras
    synthetic.transform.set_random_state(seed=int(np.random.SeedSequence([1, p]).generate_state(1)[0]))
    assert torch.equal(torch.as_tensor(got["ddf"]), torch.as_tensor(synthetic[0]["ddf"]))


def test_pseudo_pairs_batch_with_pairs_of_the_bundles_preprocessing(tmp_path):
    """The bundles' synthetic pairs come from files through ``mri_preprocessing`` (load, resample, crop to the
    foreground); a batch drawn from ``MixedPairs`` may hold one of them beside a pseudo-pair (here: the collate of a
    2-item batch; a crop that stored its box in the item broke it with ``KeyError: 'foreground_start_coord'``)."""
    network, weights, pair, volumes = pseudo_setup(tmp_path)
    files = []
    for i, volume in enumerate(volumes):
        files.append({"image": str(tmp_path / f"subject{i}.nii.gz")})
        nib.save(nib.Nifti1Image(volume["image"][0].numpy(), np.eye(4)), files[-1]["image"])
    synthetic = Dataset(files, Compose(mri_preprocessing(("image",)) + [pair]))
    pseudo = InterSubjectPseudoPairs(Dataset(files, Compose(mri_preprocessing(("image",)))), network, str(weights),
                                     pair, num_pairs=1, threshold=1e6, seed=3)
    mixed = MixedPairs(synthetic, pseudo)
    batch = list_data_collate([mixed[0], mixed[len(mixed) - 1]])
    assert batch["ddf"].shape == (2, 3, 32, 32, 16) and sorted(mixed[0]) == sorted(pseudo[0])


def test_pseudo_pairs_follow_the_pair_transforms_background_mask(tmp_path):
    """With ``mask_background`` the pseudo-targets, like the synthetic ones, skip view b's background (here the zero
    padding around the subjects), and keep the cycle-consistent foreground voxels the plain pairs keep."""
    network, weights, plain_pair, volumes = pseudo_setup(tmp_path)
    masked_pair = CoverPaird("image", patch_size=(32, 32, 16), context_size=(40, 40, 24), reach=network.reach,
                             background_threshold=0.05, mask_background=True)
    plain = InterSubjectPseudoPairs(volumes, network, str(weights), plain_pair, num_pairs=2, threshold=1e6, seed=3)
    masked = InterSubjectPseudoPairs(volumes, network, str(weights), masked_pair, num_pairs=2, threshold=1e6, seed=3)
    for p, m in zip(plain, masked):
        foreground = foreground_mask(m["image_b"], 0.05).float()
        assert 0 < foreground.mean() < 0.9 and torch.equal(m["mask"], p["mask"] * foreground)
        assert m["foreground_fraction"] == 1.0 and p["foreground_fraction"] < 0.9
    assert masked.kept_fraction < plain.kept_fraction


def test_missing_teacher_weights_is_a_clear_error(tmp_path):
    network, _, pair, volumes = pseudo_setup(tmp_path)
    with pytest.raises(InputFileNotFoundError, match="--pseudo#teacher_weights"):
        InterSubjectPseudoPairs(volumes, network, None, pair, num_pairs=1)


@pytest.mark.slow
def test_overlay_trains_on_pseudo_pairs_from_a_teacher(tmp_path):
    folder = REPO / "bundles" / "cover_mri"
    teacher = tmp_path / "teacher"
    outputs = ["--output_dir", str(tmp_path / "runs"), "--resume", "False"]
    bundle("run", "--config_file", str(folder / "train.json"), "--epochs", "1", *TINY, *outputs,
           "--ckpt_dir", str(teacher), cwd=tmp_path)
    configs = f"['{folder / 'train.json'}','{folder / 'pseudo_fields.json'}']"
    result = bundle("run", "--config_file", configs, "--epochs", "1", *TINY, *outputs, "--ckpt_dir",
                    str(tmp_path / "student"), "--pseudo#teacher_weights", str(teacher / "model.pt"),
                    "--pseudo#pairs", "2", "--pseudo#threshold", "1000", cwd=tmp_path)
    log = result.stdout + result.stderr
    assert "2 inter-subject pseudo-pairs from" in log and "val_epe" in log
    assert (tmp_path / "student" / "model.pt").is_file()
