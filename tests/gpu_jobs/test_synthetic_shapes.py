import numpy as np
import pytest

from gpu_jobs import synthetic_shapes as shapes


def _pixels(image) -> bytes:
    return image.tobytes() + repr(image.size).encode()


def test_same_seed_same_samples_and_other_seed_differs():
    first = [(s.caption, _pixels(s.image)) for s in shapes.dataset(seed=3, n=12)]
    again = [(s.caption, _pixels(s.image)) for s in shapes.dataset(seed=3, n=12)]
    other = [(s.caption, _pixels(s.image)) for s in shapes.dataset(seed=4, n=12)]
    assert first == again
    assert all(a[1] != b[1] for a, b in zip(first, other))


def test_a_sample_does_not_depend_on_the_ones_before_it():
    ninth = list(shapes.dataset(seed=1, n=10))[9]
    alone = shapes.sample(1, 9, ninth.colour, ninth.shape)
    assert (alone.caption, _pixels(alone.image)) == (ninth.caption, _pixels(ninth.image))


def test_dataset_cycles_through_the_classes_in_order():
    got = [(s.colour, s.shape) for s in shapes.dataset(seed=0, n=len(shapes.CLASSES) + 2)]
    assert got == list(shapes.CLASSES) + list(shapes.CLASSES[:2])
    assert len(shapes.CLASSES) == len(shapes.COLOURS) * len(shapes.SHAPES) == 48


def test_captions_name_the_class_with_the_right_article():
    assert "an orange star" in shapes.captions("orange", "star")
    assert "a photo of a red circle" in shapes.captions("red", "circle")
    # Background templates only when the background is known.
    assert not any("background" in c for c in shapes.captions("red", "circle"))
    assert "a blue ring on a cream background" in shapes.captions("blue", "ring", "cream")
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = shapes.caption("pink", "cross", rng, "white")
        assert "pink cross" in text


@pytest.mark.parametrize("colour,shape", shapes.CLASSES)
def test_every_class_renders_its_colour_legibly(colour, shape):
    rng = np.random.default_rng(7)
    image = shapes.render(colour, shape, rng, size=(96, 80))
    assert image.mode == "RGB" and image.size == (96, 80)
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
    near = np.linalg.norm(pixels - np.array(shapes.COLOURS[colour]), axis=1) < 60
    assert near.mean() > 0.04  # the smallest shapes (rings, stars) still cover a few percent


def test_random_sizes_stay_in_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = shapes.random_size(rng)
        assert shapes.MIN_SIDE <= max(w, h) <= shapes.MAX_SIDE
        assert max(w, h) / min(w, h) <= shapes.MAX_ASPECT + 0.01


def test_backgrounds_contrast_with_the_shape():
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert shapes.random_background("black", rng) != "dark grey"


def test_layers_compose_onto_any_image():
    rng = np.random.default_rng(0)
    canvas = shapes.background((120, 90), "cream", rng)
    layered = shapes.add_noise(shapes.draw_shape(canvas, "star", shapes.COLOURS["blue"], rng), rng)
    assert layered.size == canvas.size and layered.tobytes() != canvas.tobytes()
