"""uint8 pictures to the network's normalised tensors and back."""

import warnings

import numpy as np
import torch

from pitscope.tensors import IMAGENET_MEAN, IMAGENET_STD, denormalise, image_to_tensor, images_to_batch


def _reference(image: np.ndarray) -> torch.Tensor:
    x = torch.tensor(np.array(image), dtype=torch.float64).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64
    ).view(3, 1, 1)


def test_image_to_tensor_normalises_any_layout_of_picture_without_warnings():
    picture = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    frozen = picture.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only array (a memory-mapped file) gives no warning
        for image in (picture, frozen, picture[::-1, ::2], picture[3:17, 5:25]):
            got = image_to_tensor(image)
            assert got.dtype == torch.float32 and got.shape == (3, *image.shape[:2]) and got.is_contiguous()
            torch.testing.assert_close(got.double(), _reference(image), rtol=0, atol=1e-6)
    assert frozen.flags.writeable is False and np.array_equal(frozen, picture)  # the input is left alone
    batch = images_to_batch([picture, picture[::-1]])
    assert batch.shape == (2, 3, 20, 30)
    torch.testing.assert_close(denormalise(batch)[0], torch.tensor(picture).permute(2, 0, 1) / 255.0)
