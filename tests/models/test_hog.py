"""The torch HOG equals scikit-image's on the 128 x 64 grey window; targets have 3780 values."""

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.feature import hog

from pitscope.models.hog import HOG_DIM, hog_features, hog_target, hog_window, rgb_target

TOL = 1e-6  # skimage sums each cell in float32; we reach ~5e-8


def skimage_hog(grey: np.ndarray) -> np.ndarray:
    return hog(
        grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=True
    )


def _windows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:128, :64].astype(float)
    return {
        "random": rng.random((128, 64)),
        "checkerboard": ((x // 8 + y // 8) % 2).astype(float),
        "disc": (((x - 32) ** 2 + (y - 64) ** 2) < 400).astype(float),
        "diagonal_stripes": (((x + y) % 7) < 3).astype(float),
        "waves": 0.5 + 0.5 * np.sin(0.3 * x + 0.2 * y),
        "constant": np.full((128, 64), 0.3),
    }


@pytest.mark.parametrize("name", list(_windows()))
def test_matches_skimage_on_grey_window(name):
    grey = _windows()[name]
    ours = hog_features(torch.from_numpy(grey)[None, None])  # (1, 3780) float64
    assert ours.shape == (1, HOG_DIM)
    np.testing.assert_allclose(ours[0].numpy(), skimage_hog(grey), rtol=0, atol=TOL)


def test_rgb_image_matches_skimage_on_its_window():
    rgb = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    window = hog_window(rgb)  # (1, 128, 64)
    assert window.shape == (1, 128, 64)
    np.testing.assert_allclose(hog_features(rgb)[0].numpy(), skimage_hog(window[0].numpy()), rtol=0, atol=TOL)


def test_grey_conversion_is_rgb2gray():
    rgb = torch.rand(2, 3, 128, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = np.stack([rgb2gray(img.permute(1, 2, 0).numpy()) for img in rgb])
    np.testing.assert_allclose(hog_window(rgb).numpy(), expected, rtol=0, atol=1e-12)


def test_batch_equals_per_image_and_keeps_dtype():
    images = torch.rand(4, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    batch = hog_features(images)
    assert batch.shape == (4, HOG_DIM) and batch.dtype == torch.float32
    for i in range(4):
        # equal to float32 rounding: on some CPUs oneDNN's kernels sum in another order per batch size
        torch.testing.assert_close(batch[i], hog_features(images[i : i + 1])[0], rtol=1e-5, atol=1e-7)
    assert not torch.equal(batch[0], batch[1])


def test_hog_target_undoes_normalisation():
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(hog_target(normalised, mean, std), hog_features(images), rtol=0, atol=1e-7)


def test_rgb_target_is_area_average_of_hog_length():
    images = torch.rand(2, 3, 70, 72, generator=torch.Generator().manual_seed(5))
    target = rgb_target(images)
    assert target.shape == (2, HOG_DIM)
    blocks = images.reshape(2, 3, 35, 2, 36, 2).mean(dim=(3, 5))  # exact 2 x 2 averages
    torch.testing.assert_close(target, blocks.flatten(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    images = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    on_gpu = hog_features(images.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), hog_features(images), rtol=0, atol=1e-6)


def test_float32_images_match_skimage_on_their_float32_window():
    """Training passes float32 images: the window stays float32, the histograms run in float64."""
    rgb = torch.rand(2, 3, 200, 150, generator=torch.Generator().manual_seed(6))
    window = hog_window(rgb)
    assert window.dtype == torch.float32
    ours = hog_features(rgb)
    for i in range(2):
        expected = skimage_hog(window[i].double().numpy())
        np.testing.assert_allclose(ours[i].double().numpy(), expected, rtol=0, atol=TOL)
