"""Image ops against TensorFlow: resizing modes, crop-and-resize, colour, non-max suppression."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import assert_close, case, compare_with_tf, get_tf, ph, run_cases, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle




def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(dtype)



# (input HxW, output HxW): up, down, mixed, identity, to 1 pixel
SIZES = [
    ((4, 5), (8, 10)),
    ((6, 7), (3, 4)),
    ((5, 3), (7, 2)),
    ((4, 4), (4, 4)),
    ((3, 5), (1, 1)),
    ((1, 1), (3, 2)),
]
MODES = [(False, False), (True, False), (False, True)]  # (align_corners, half_pixel_centers)


def case_resize(op, insize, outsize, align, half):
    x = rand(2, *insize, 3) * 10

    def build(tf):
        return getattr(tf.raw_ops, op)(
            images=ph(tf, "x", x),
            size=tf.constant(list(outsize)),
            align_corners=align,
            half_pixel_centers=half,
        )

    return case(build, {"x:0": x}, grads=True, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("align,half", MODES)
@pytest.mark.parametrize("op", ["ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic"])
def test_resize(op, align, half):
    run_cases([case_resize(op, insize, outsize, align, half) for insize, outsize in SIZES])


@pytest.mark.parametrize("dtype", [np.int32, np.uint8])
def test_resize_integer_images(dtype):
    x = (rand(1, 5, 4, 2) * 200).astype(dtype)

    def build(tf):
        xp = ph(tf, "x", x)
        return [
            tf.raw_ops.ResizeNearestNeighbor(images=xp, size=tf.constant([7, 9])),
            tf.raw_ops.ResizeBilinear(images=xp, size=tf.constant([3, 6]), half_pixel_centers=True),
        ]

    compare_with_tf(build, {"x:0": x}, rtol=1e-5, atol=1e-4)


def case_resize_area(insize, outsize, align):
    x = rand(2, *insize, 2)

    def build(tf):
        return tf.raw_ops.ResizeArea(
            images=ph(tf, "x", x), size=tf.constant(list(outsize)), align_corners=align
        )

    return case(build, {"x:0": x}, rtol=1e-4, atol=1e-5)


def test_resize_area():
    sizes = SIZES[:3] + [((7, 9), (3, 2))]
    run_cases([case_resize_area(i, o, align) for i, o in sizes for align in (False, True)])


def test_resize_high_level_v1():
    x = rand(1, 6, 5, 3)

    def build(tf):
        xp = ph(tf, "x", x)
        return [
            tf.compat.v1.image.resize_bilinear(xp, [9, 4]),
            tf.compat.v1.image.resize_nearest_neighbor(xp, [3, 8], align_corners=True),
        ]

    compare_with_tf(build, {"x:0": x}, grads=True, rtol=1e-4, atol=1e-5)


BOXES = np.array(
    [
        [0.1, 0.2, 0.7, 0.9],
        [0.0, 0.0, 1.0, 1.0],
        [0.5, 0.6, 0.2, 0.1],
        [-0.2, 0.3, 0.6, 1.3],
        [0.3, 0.3, 0.3, 0.8],
    ],
    np.float32,
)


def case_crop_and_resize(method, extrapolation, crop):
    image = rand(2, 6, 7, 3) * 5
    box_ind = np.array([0, 1, 1, 0, 1], np.int32)

    def build(tf):
        return tf.raw_ops.CropAndResize(
            image=ph(tf, "image", image),
            boxes=tf.constant(BOXES),
            box_ind=tf.constant(box_ind),
            crop_size=tf.constant(list(crop)),
            method=method,
            extrapolation_value=extrapolation,
        )

    return case(build, {"image:0": image}, grads=method == "bilinear", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,extrapolation", [("bilinear", 0.0), ("bilinear", -1.5), ("nearest", 0.25)])
def test_crop_and_resize(method, extrapolation):
    run_cases([case_crop_and_resize(method, extrapolation, crop) for crop in [(3, 4), (1, 1), (5, 2)]])


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_crop_and_resize_box_gradients(method):
    # jax.grad through jaxmeta's CropAndResize against TF's gradient (CropAndResizeGradBoxes, which
    # for nearest crops too is the bilinear sampler's gradient).
    image = rand(1, 6, 7, 2) * 5
    boxes = np.array(
        [[0.12, 0.21, 0.73, 0.88], [0.55, 0.61, 0.23, 0.14], [-0.31, 0.42, 0.58, 1.27]], np.float32
    )

    def build(tf):
        img, bx = ph(tf, "image", image), ph(tf, "boxes", boxes)
        return [
            tf.raw_ops.CropAndResize(
                image=img, boxes=bx, box_ind=tf.constant([0, 0, 0]), crop_size=tf.constant(list(crop)), method=method
            )
            for crop in [(3, 4), (1, 1)]
        ]

    compare_with_tf(build, {"image:0": image, "boxes:0": boxes}, grads=True, rtol=1e-4, atol=1e-4)


# Boxes in every position the gradient kernels single out: inside, the whole image, flipped
# (y1 > y2, x1 > x2), partly and wholly outside, zero-sized, on the last pixel, on pixel centres.
GRAD_BOXES = np.concatenate(
    [
        BOXES,
        np.array(
            [
                [0.93, 0.97, 0.04, 0.02],
                [-0.6, -0.5, -0.1, -0.2],
                [1.0, 1.0, 1.0, 1.0],
                [0.2, 0.0, 0.8, 0.5],
                [-0.35, -0.2, 1.25, 1.1],
            ],
            np.float32,
        ),
    ]
)
GRAD_BOX_IND = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 1], np.int32)
CROPS = [(3, 4), (1, 1), (5, 2), (1, 3)]


def case_crop_grad_image(method, crop, dtype, tol):
    grads = rand(len(GRAD_BOXES), *crop, 3, seed=1) - 0.5

    def build(tf):
        return tf.raw_ops.CropAndResizeGradImage(
            grads=ph(tf, "grads", grads),
            boxes=ph(tf, "boxes", GRAD_BOXES),
            box_ind=ph(tf, "box_ind", GRAD_BOX_IND),
            image_size=tf.constant([2, 6, 7, 3]),
            T=tf.as_dtype(dtype),
            method=method,
        )

    feeds = {"grads:0": grads, "boxes:0": GRAD_BOXES, "box_ind:0": GRAD_BOX_IND}
    return case(build, feeds, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_crop_and_resize_grad_image(method):
    run_cases(
        [case_crop_grad_image(method, crop, np.float32, 1e-5) for crop in CROPS]
        + [case_crop_grad_image(method, (3, 4), np.float64, 1e-5)]
        + [case_crop_grad_image(method, (3, 4), np.float16, 2e-3)]  # TF adds in half precision
    )


def case_crop_grad_boxes(crop, image):
    grads = rand(len(GRAD_BOXES), *crop, image.shape[-1], seed=2) - 0.5

    def build(tf):
        return tf.raw_ops.CropAndResizeGradBoxes(
            grads=ph(tf, "grads", grads),
            image=ph(tf, "image", image),
            boxes=ph(tf, "boxes", GRAD_BOXES),
            box_ind=ph(tf, "box_ind", GRAD_BOX_IND),
        )

    feeds = {"grads:0": grads, "image:0": image, "boxes:0": GRAD_BOXES, "box_ind:0": GRAD_BOX_IND}
    return case(build, feeds, rtol=1e-4, atol=1e-4)


def test_crop_and_resize_grad_boxes():
    image = rand(2, 6, 7, 3, seed=3) * 5
    run_cases(
        [case_crop_grad_boxes(crop, image) for crop in CROPS]
        + [case_crop_grad_boxes((3, 4), (image * 40).astype(np.uint8))]
    )


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_crop_and_resize_gradient_graph(method):
    # The graph tf.gradients writes for a crop-and-resize (Faster R-CNN's ROI pooling), run by jaxmeta;
    # image_size is a constant for the static image and a Shape for the one of unknown batch size.
    image = rand(2, 6, 7, 3) * 5

    def build(tf):
        outs = []
        for name, shape in [("image", image.shape), ("image_dyn", (None, 6, 7, 3))]:
            img = tf.compat.v1.placeholder(tf.float32, shape, name=name)
            boxes = tf.compat.v1.placeholder(tf.float32, GRAD_BOXES.shape, name=name + "_boxes")
            crops = tf.image.crop_and_resize(img, boxes, GRAD_BOX_IND, [3, 4], method=method)
            weights = tf.constant(rand(len(GRAD_BOXES), 3, 4, 3, seed=4) - 0.5)
            outs += [crops, *tf.compat.v1.gradients(crops, [img, boxes], grad_ys=weights)]
        return outs

    feeds = {"image:0": image, "image_boxes:0": GRAD_BOXES, "image_dyn:0": image, "image_dyn_boxes:0": GRAD_BOXES}
    run = compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4)
    op_types = {n.op for n in run.meta_graph.graph_def.node}
    assert {"CropAndResizeGradImage", "CropAndResizeGradBoxes", "Shape"} <= op_types


def test_crop_and_resize_grad_image_size_must_be_static():
    grads = rand(1, 2, 2, 1)

    def build(tf):
        return tf.raw_ops.CropAndResizeGradImage(
            grads=ph(tf, "grads", grads),
            boxes=tf.constant([[0.0, 0.0, 1.0, 1.0]]),
            box_ind=tf.constant([0]),
            image_size=tf.compat.v1.placeholder(tf.int32, [4], name="size"),
            T=tf.float32,
            name="grad_image",
        )

    size = np.int32([1, 3, 3, 1])
    run = run_tf(build, {"grads:0": grads, "size:0": size})
    f = run.graph.function(run.fetch_names, feeds=["grads:0", "size:0"])
    for fn in (f, jax.jit(f)):  # a fed value is never known when the graph is traced
        with pytest.raises(jaxmeta.GraphError, match="grad_image.*image_size"):
            fn({}, grads, size)


def case_resize_bicubic_grad(insize, outsize, align, half, dtype=np.float32):
    grads = rand(2, *outsize, 3, seed=1) - 0.5
    image = rand(2, *insize, 3).astype(dtype)

    def build(tf):
        return tf.raw_ops.ResizeBicubicGrad(
            grads=ph(tf, "grads", grads),
            original_image=ph(tf, "image", image),
            align_corners=align,
            half_pixel_centers=half,
        )

    return case(build, {"grads:0": grads, "image:0": image}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("align,half", MODES)
def test_resize_bicubic_grad(align, half):
    run_cases(
        [case_resize_bicubic_grad(i, o, align, half) for i, o in SIZES]
        + [case_resize_bicubic_grad((4, 5), (7, 3), align, half, np.float64)]
    )


def test_resize_bicubic_gradient_graph():
    x = rand(2, 5, 4, 3)

    def build(tf):
        xp = ph(tf, "x", x)
        outs = []
        for size, kwargs in [([7, 9], {}), ([3, 6], {"align_corners": True}), ([8, 3], {"half_pixel_centers": True})]:
            y = tf.raw_ops.ResizeBicubic(images=xp, size=tf.constant(size), **kwargs)
            outs += tf.compat.v1.gradients(y, xp, grad_ys=tf.constant(rand(2, *size, 3, seed=5) - 0.5))
        return outs

    run = compare_with_tf(build, {"x:0": x}, rtol=1e-4, atol=1e-5)
    assert "ResizeBicubicGrad" in {n.op for n in run.meta_graph.graph_def.node}


RGB = (
    np.concatenate(
        [
            np.random.default_rng(0).uniform(0, 1, (4, 5, 3)).reshape(-1, 3),
            np.array(
                [
                    [0, 0, 0],
                    [1, 1, 1],
                    [0.5, 0.5, 0.5],
                    [1, 0, 0],
                    [0, 1, 0],
                    [0, 0, 1],
                    [1, 1, 0],
                    [0.2, 0.8, 0.8],
                ]
            ),
        ]
    )
    .astype(np.float32)
    .reshape(4, 7, 3)
)


def test_rgb_hsv_round_trip():
    hsv = np.random.default_rng(3).uniform(0, 1, (4, 7, 3)).astype(np.float32)

    def build(tf):
        return [
            tf.raw_ops.RGBToHSV(images=ph(tf, "rgb", RGB)),
            tf.raw_ops.HSVToRGB(images=ph(tf, "hsv", hsv)),
        ]

    compare_with_tf(build, {"rgb:0": RGB, "hsv:0": hsv}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("delta", [0.0, 0.2, -0.45, 0.9])
def test_adjust_hue(delta):
    def build(tf):
        return tf.raw_ops.AdjustHue(images=ph(tf, "x", RGB), delta=tf.constant(np.float32(delta)))

    compare_with_tf(build, {"x:0": RGB}, rtol=1e-5, atol=1e-5)


def test_colour_ops_outside_the_unit_range():
    """Values outside [0, 1] (normalized images, hues past 1) go through TF's kernels' own
    formulas: HSVToRGB's clamped tents (no wrapping of h), AdjustHue's hue and min/max channel
    form (no saturation), as well as NaN and inf."""
    x = (np.random.default_rng(5).standard_normal((4, 6, 3)) * 2).astype(np.float32)
    x[0, :4] = [[np.nan, 0.2, 0.3], [np.inf, 1.0, 0.0], [-np.inf, 0.5, 0.5], [0.3, 0.3, 0.3]]

    def build(tf):
        p = ph(tf, "x", x)
        r = tf.raw_ops
        return [r.HSVToRGB(images=p), r.AdjustHue(images=p, delta=tf.constant(np.float32(0.3))),
                r.AdjustHue(images=p, delta=tf.constant(np.float32(-1.7)))]

    compare_with_tf(build, {"x:0": x}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_draw_bounding_boxes(depth):
    """Boxes inside, across the edges, inverted, wholly outside and overlapping (a later one
    paints over), with TF's colour table and with given colours (cycling, more channels than the
    image has), V1 and V2."""
    images = np.random.default_rng(depth).uniform(0, 1, (2, 9, 11, depth)).astype(np.float32)
    boxes = np.array([[[0.1, 0.2, 0.6, 0.7], [-0.3, 0.5, 0.4, 1.4], [0.8, 0.1, 0.2, 0.9], [1.2, 0.2, 1.5, 0.5],
                       [0.3, 0.3, 0.9, 0.95]],
                      [[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.25, -0.2, 0.75, 0.3], [0.1, 0.1, 0.2, 0.2],
                       [0.4, 0.6, 1.1, 1.2]]], np.float32)
    colors = np.array([[0.2, 0.4, 0.6, 0.8, 0.9], [1.0, 0.0, 0.5, 0.25, 0.1]], np.float32)

    def build(tf):
        x, b = ph(tf, "x", images), ph(tf, "b", boxes)
        r = tf.raw_ops
        return [r.DrawBoundingBoxes(images=x, boxes=b), r.DrawBoundingBoxesV2(images=x, boxes=b, colors=colors),
                r.DrawBoundingBoxesV2(images=x, boxes=b, colors=np.zeros((0, 4), np.float32)),
                r.DrawBoundingBoxes(images=tf.cast(x, tf.float16), boxes=b)]

    compare_with_tf(build, {"x:0": images, "b:0": boxes}, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 2.5])
def test_adjust_saturation(scale):
    def build(tf):
        return tf.raw_ops.AdjustSaturation(images=ph(tf, "x", RGB), scale=tf.constant(np.float32(scale)))

    compare_with_tf(build, {"x:0": RGB}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 4, 3), (2, 3, 4, 2)])
def test_adjust_contrast(shape):
    x = rand(*shape)

    def build(tf):
        return tf.raw_ops.AdjustContrastv2(
            images=ph(tf, "x", x), contrast_factor=tf.constant(np.float32(1.7))
        )

    compare_with_tf(build, {"x:0": x}, rtol=1e-5, atol=1e-6)  # TF defines no gradient for it


def test_adjust_contrast_v1():
    # AdjustContrast was removed in GraphDef version 2; TF still runs it from a GraphDef that old.
    images = {"x8": (rand(2, 4, 5, 3) * 255).astype(np.uint8), "xf": rand(4, 5, 2)}
    ranges = [(1.7, 40.0, 200.0), (0.4, 0.3, 0.6), (2.0, 0.8, 0.2)]  # the last: min_value wins

    def build(tf):
        scratch = tf.Graph()
        with scratch.as_default():
            for name, x in images.items():
                ph(tf, name, x)
            for i, values in enumerate(ranges):
                for name, v in zip(("factor", "lo", "hi"), values):
                    tf.constant(np.float32(v), name=f"{name}{i}")
        graph_def = scratch.as_graph_def()
        graph_def.versions.producer = 1
        names = []
        for i, x in enumerate(["x8", "xf", "xf"]):
            node = graph_def.node.add(name=f"contrast{i}", op="AdjustContrast")
            node.input.extend([x, f"factor{i}", f"lo{i}", f"hi{i}"])
            node.attr["T"].type = tf.as_dtype(images[x].dtype).as_datatype_enum
            names.append(node.name + ":0")
        tf.compat.v1.import_graph_def(graph_def, name="")
        graph = tf.compat.v1.get_default_graph()
        return [graph.get_tensor_by_name(n) for n in names]

    compare_with_tf(build, {"x8:0": images["x8"], "xf:0": images["xf"]}, rtol=1e-5, atol=1e-5)


def _nms_data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 10, (n, 2))
    sizes = rng.uniform(1, 4, (n, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)
    boxes[::5] = boxes[::5][:, [2, 3, 0, 1]]  # flipped corners count too
    scores = rng.uniform(0, 1, n).astype(np.float32)
    scores[3] = scores[7]  # a tie: the lower index goes first
    return boxes, scores


@pytest.mark.parametrize("max_out,iou,thr", [(5, 0.5, 0.0), (20, 0.3, 0.4), (30, 0.7, -1.0), (3, 0.0, 0.2)])
def test_non_max_suppression_padded(max_out, iou, thr):
    boxes, scores = _nms_data()

    def build(tf):
        b, s = ph(tf, "b", boxes), ph(tf, "s", scores)
        common = dict(
            boxes=b,
            scores=s,
            max_output_size=tf.constant(max_out),
            iou_threshold=tf.constant(np.float32(iou)),
            score_threshold=tf.constant(np.float32(thr)),
        )
        v4 = tf.raw_ops.NonMaxSuppressionV4(pad_to_max_output_size=True, **common)
        v5 = tf.raw_ops.NonMaxSuppressionV5(
            soft_nms_sigma=tf.constant(np.float32(0)), pad_to_max_output_size=True, **common
        )
        return [*v4, *v5]

    compare_with_tf(build, {"b:0": boxes, "s:0": scores})


@pytest.mark.parametrize("seed", [0, 1])
def test_non_max_suppression_unpadded(seed):
    boxes, scores = _nms_data(25, seed)

    def build(tf):
        b, s = ph(tf, "b", boxes), ph(tf, "s", scores)
        m, iou = tf.constant(10), tf.constant(np.float32(0.4))
        return [
            tf.raw_ops.NonMaxSuppression(boxes=b, scores=s, max_output_size=m, iou_threshold=0.4),
            tf.raw_ops.NonMaxSuppressionV2(boxes=b, scores=s, max_output_size=m, iou_threshold=iou),
            tf.raw_ops.NonMaxSuppressionV3(
                boxes=b,
                scores=s,
                max_output_size=m,
                iou_threshold=iou,
                score_threshold=tf.constant(np.float32(0.3)),
            ),
            *tf.raw_ops.NonMaxSuppressionV4(
                boxes=b,
                scores=s,
                max_output_size=m,
                iou_threshold=iou,
                score_threshold=tf.constant(np.float32(0.3)),
            ),
        ]

    # The unpadded forms have data-dependent shapes: they run outside jit only.
    run = compare_with_tf(build, {"b:0": boxes, "s:0": scores}, jit_modes=(False,))
    f = run.graph.function(run.fetch_names[1], feeds=["b:0", "s:0"])
    with pytest.raises(jaxmeta.GraphError, match="pad_to_max_output_size"):
        jax.jit(f)({}, boxes, scores)


def test_resize_dynamic_size_is_an_error():
    x = rand(1, 4, 4, 1)

    def build(tf):
        size = tf.compat.v1.placeholder(tf.int32, [2], name="size")
        return tf.raw_ops.ResizeBilinear(images=ph(tf, "x", x), size=size)

    run = run_tf(build, {"x:0": x, "size:0": np.int32([2, 2])})
    f = run.graph.function(run.fetch_names, feeds=["x:0", "size:0"])
    with pytest.raises(jaxmeta.GraphError, match="size"):
        jax.jit(f)({}, x, np.int32([2, 2]))


def test_soft_nms_is_an_error():
    boxes, scores = _nms_data()

    def build(tf):
        return tf.raw_ops.NonMaxSuppressionV5(
            boxes=ph(tf, "b", boxes),
            scores=ph(tf, "s", scores),
            max_output_size=tf.constant(5),
            iou_threshold=tf.constant(0.5),
            score_threshold=tf.constant(0.0),
            soft_nms_sigma=tf.constant(0.5),
            pad_to_max_output_size=True,
        )

    run = run_tf(build, {"b:0": boxes, "s:0": scores})
    f = run.graph.function(run.fetch_names, feeds=["b:0", "s:0"])
    with pytest.raises(jaxmeta.GraphError, match="soft"):
        f({}, boxes, scores)


def _transforms(batch: int) -> list[np.ndarray]:
    """Rotations, shears, zooms, shifts and projective maps, as 8-vectors."""
    angle = 0.4
    c, s = np.cos(angle), np.sin(angle)
    rotate = [c, -s, 3.0, s, c, -2.0, 0, 0]
    out = [np.array([rotate], np.float32),
           np.array([[1.3, 0.2, -4.5, -0.1, 0.8, 2.25, 0, 0]], np.float32),
           np.array([[1, 0, 0.5, 0, 1, -0.5, 0.01, -0.02]], np.float32),
           np.array([[-1, 0, 9.7, 0, -1, 8.3, 0, 0]], np.float32),
           np.array([[0, 0, 0, 0, 0, 0, -1 / 3, 0]], np.float32)]  # k is 0 at x = 3
    out.append(np.stack([t[0] for t in out[:batch]] + [out[0][0]] * (batch - len(out[:batch]))))
    return out


@pytest.mark.parametrize("mode", ["CONSTANT", "REFLECT", "WRAP", "NEAREST"])
@pytest.mark.parametrize("interpolation", ["NEAREST", "BILINEAR"])
def test_image_projective_transform(mode, interpolation):
    """Keras's RandomRotation/Zoom/Translation op: every fill mode and interpolation, per-image
    transforms, another output size, V3's fill value; uint8 images to one level (TF truncates a
    float it may have rounded otherwise)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 7, 9, 2)).astype(np.float32)
    integers = rng.integers(0, 256, (3, 7, 9, 2)).astype(np.uint8)
    feeds = {"images:0": images, "integers:0": integers}

    def build(tf):
        x, ints = ph(tf, "images", images), ph(tf, "integers", integers)
        outs = []
        for transforms in _transforms(3):
            for shape in ([7, 9], [5, 12]):
                outs.append(tf.raw_ops.ImageProjectiveTransformV3(
                    images=x, transforms=transforms, output_shape=shape, fill_value=0.25, interpolation=interpolation,
                    fill_mode=mode))
            outs.append(tf.raw_ops.ImageProjectiveTransformV2(images=x, transforms=transforms, output_shape=[7, 9],
                                                              interpolation=interpolation, fill_mode=mode))
            outs.append(tf.cast(tf.raw_ops.ImageProjectiveTransformV3(
                images=ints, transforms=transforms, output_shape=[6, 6], fill_value=7.0, interpolation=interpolation,
                fill_mode=mode), tf.float32))
        return outs

    compare_with_tf(build, feeds, rtol=1e-5, atol=1.0001 if interpolation == "BILINEAR" else 1e-5)
    compare_with_tf(lambda tf: build(tf)[:-1:4], feeds, rtol=1e-4, atol=1e-5)  # the float images, closely


def test_random_transform_behind_a_cond():
    """An augmentation as TF1 code writes it: a random angle drawn outside a v1 cond on the
    learning phase (a placeholder whose default is False), the rotation inside its true branch. At
    inference the angle reaches no taken branch, so no key is needed; fed True, the images rotate
    by the key's angle (other numbers than TF's)."""
    from oracle import get_tf

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 3], name="x")
        phase = tf.compat.v1.placeholder_with_default(False, [], name="learning_phase")
        angle = tf.random.uniform([], -0.5, 0.5)
        c, s = tf.cos(angle), tf.sin(angle)
        transform = tf.stack([c, -s, 0.0, s, c, 0.0, 0.0, 0.0])[None]

        def rotate():
            return tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transform, output_shape=[8, 8],
                                                         fill_value=0.0, interpolation="BILINEAR")

        out = tf.identity(tf.compat.v1.cond(phase, rotate, lambda: tf.identity(x)), name="out")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    infer = graph.function(out.name, feeds=["x:0"])
    for f in (infer, jax.jit(infer)):
        np.testing.assert_array_equal(f({}, images), images)
    train = graph.function(out.name, feeds=["x:0", "learning_phase:0"])
    with pytest.raises(jaxmeta.FeedError, match="draws random numbers"):
        train({}, images, True)
    rotated = train({}, images, True, key=jax.random.key(0))
    assert rotated.shape == images.shape and not np.allclose(rotated, images)
    np.testing.assert_array_equal(train({}, images, False), images)


@pytest.mark.parametrize("antialias", [True, False])
def test_scale_and_translate(antialias):
    """`tf.image.resize` with its TF2 kernels (one ScaleAndTranslate op each) down and up, and the
    raw op with translations; gradients through TF's ScaleAndTranslateGrad."""
    images = np.random.default_rng(1).uniform(-1, 1, (2, 11, 9, 3)).astype(np.float32)
    feeds = {"x:0": images}

    def build(tf):
        x = ph(tf, "x", images)
        outs = []
        for method in ("lanczos3", "lanczos5", "gaussian", "mitchellcubic", "bicubic", "bilinear"):
            for size in ([5, 4], [17, 20]):
                outs.append(tf.image.resize(x, size, method=method, antialias=antialias))
        for kind in ("lanczos1", "box", "triangle", "keyscubic"):
            outs.append(tf.raw_ops.ScaleAndTranslate(images=x, size=[7, 13], scale=[0.7, 1.6], translation=[1.5, -2.25],
                                                     kernel_type=kind, antialias=antialias))
        return outs

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=True, grad_rtol=1e-4, grad_atol=1e-4)


def test_scale_and_translate_grad_op():
    images = np.random.default_rng(2).uniform(-1, 1, (2, 11, 9, 3)).astype(np.float32)
    grads = np.random.default_rng(3).uniform(-1, 1, (2, 7, 13, 3)).astype(np.float32)
    feeds = {"x:0": images, "g:0": grads}

    def build(tf):
        x, g = ph(tf, "x", images), ph(tf, "g", grads)
        return [tf.raw_ops.ScaleAndTranslateGrad(grads=g, original_image=x, scale=[0.7, 1.6], translation=[1.5, -2.25],
                                                 kernel_type=kind, antialias=antialias)
                for kind in ("lanczos3", "gaussian", "triangle") for antialias in (True, False)]

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_non_max_suppression_with_overlaps(seed):
    """`tf.image.non_max_suppression_overlaps`: an arbitrary similarity matrix suppresses (not the
    boxes' IoU); ties in score go to the lower index, as in TF."""
    rng = np.random.default_rng(seed)
    overlaps = rng.uniform(0, 1, (20, 20)).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, 20), 1).astype(np.float32)
    feeds = {"o:0": overlaps, "s:0": scores}

    def build(tf):
        o, s = ph(tf, "o", overlaps), ph(tf, "s", scores)
        return [tf.image.non_max_suppression_overlaps(o, s, 8, overlap_threshold=0.6, score_threshold=0.2),
                tf.image.non_max_suppression_overlaps(o, s, 20, overlap_threshold=0.9)]

    compare_with_tf(build, feeds, jit_modes=(False,))


# -- region proposals ------------------------------------------------------------------------------
# TF has GenerateBoundingBoxProposals on the GPU only (the CPU build here cannot run it), so these
# tests compare jaxmeta with `_proposals_reference`, a NumPy transcription of TF's GPU kernel, and
# with TF itself only where TF can run the op. TF still builds the graphs (its op definition and
# shape function), and its CPU NonMaxSuppression checks the transcription's NMS step.


def _cub_order(scores):
    """CUB's stable descending radix sort (TF's `SortPairsDescending`): larger first, ties in index
    order; a float's key flips all bits when negative, else the sign bit."""
    bits = scores.view(np.uint32)
    keys = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
    return np.argsort(~keys, kind="stable")


def _greedy_nms(boxes):
    """TF's `NmsGpu` over `(x1, y1, x2, y2, threshold)` boxes sorted best first (no flipping):
    box j is masked by an earlier kept box i when `OverThreshold(i, j)`."""
    def over(a, b, threshold):
        a_area = (a[2] - a[0]) * (a[3] - a[1])
        b_area = (b[2] - b[0]) * (b[3] - b[1])
        if a_area == 0 or b_area == 0:
            return False
        w = max(min(a[2], b[2]) - max(a[0], b[0]), np.float32(0))  # fdimf
        h = max(min(a[3], b[3]) - max(a[1], b[1]), np.float32(0))
        inter = w * h
        return inter > (a_area + b_area - inter) * threshold

    removed, kept = [False] * len(boxes), []
    for i, box in enumerate(boxes):
        if removed[i]:
            continue
        kept.append(i)
        for j in range(i + 1, len(boxes)):
            removed[j] = removed[j] or over(box, boxes[j], box[4])
    return kept


def _proposals_reference(scores, deltas, info, anchors, nms_threshold, pre_nms_topn, min_size, post_nms_topn):
    """NumPy transcription, step for step and in float32, of TF's GPU kernel
    (tensorflow/core/kernels/image/generate_box_proposals_op.cu.cc with NmsGpu from
    non_max_suppression_op.cu.cc): per image, sort all scores (CUB, stable), take the first
    min(n, pre_nms_topn), decode them (GeneratePreNMSUprightBoxesKernel), drop boxes whose shorter
    side is below min_size * scale, NMS, write the first post_nms_topn as [y1, x1, y2, x2], zeros
    after. Returns (rois, probabilities, the NMS inputs per image, the number dropped by min_size)."""
    f32 = np.float32
    num_images, height, width, num_anchors = scores.shape
    n = height * width * num_anchors
    anchors = anchors.reshape(-1)[: 4 * n].reshape(n, 4)  # no image offset: shared by all images
    deltas = deltas.reshape(num_images, n, 4)
    clip = f32(np.log(1000.0 / 16.0))
    rois = np.zeros((num_images, post_nms_topn, 4), f32)
    probs = np.zeros((num_images, post_nms_topn), f32)
    nms_inputs, dropped = [], 0
    for image in range(num_images):
        image_scores = scores[image].reshape(-1)
        boxes, box_scores = [], []
        for index in _cub_order(image_scores)[: min(n, pre_nms_topn)]:
            y1, x1, y2, x2 = anchors[index]
            dy, dx, dh, dw = deltas[image, index]
            dw, dh = np.fmin(dw, clip), np.fmin(dh, clip)
            w = x2 - x1
            ctr_x = x1 + f32(0.5) * w
            pred_ctr_x = ctr_x + w * dx
            pred_w = w * np.exp(dw)
            x1, x2 = pred_ctr_x - f32(0.5) * pred_w, pred_ctr_x + f32(0.5) * pred_w
            h = y2 - y1
            ctr_y = y1 + f32(0.5) * h
            pred_ctr_y = ctr_y + h * dy
            pred_h = h * np.exp(dh)
            y1, y2 = pred_ctr_y - f32(0.5) * pred_h, pred_ctr_y + f32(0.5) * pred_h
            img_h, img_w = info[image, 0], info[image, 1]
            min_size_scaled = f32(min_size) * info[image, 2]
            x1, x2 = (np.fmax(np.fmin(v, img_w), f32(0)) for v in (x1, x2))
            y1, y2 = (np.fmax(np.fmin(v, img_h), f32(0)) for v in (y1, y2))
            if np.fmin(x2 - x1, y2 - y1) >= min_size_scaled:
                boxes.append((x1, y1, x2, y2, f32(nms_threshold)))
                box_scores.append(image_scores[index])
            else:
                dropped += 1
        nms_inputs.append((boxes, box_scores))
        for i, b in enumerate(_greedy_nms(boxes)[:post_nms_topn]):
            x1, y1, x2, y2, _ = boxes[b]
            rois[image, i] = (y1, x1, y2, x2)
            probs[image, i] = box_scores[b]
    return rois, probs, nms_inputs, dropped


def _proposal_data(seed, num_images=2, height=5, width=6, num_anchors=3, stride=8.0):
    """Anchors of three shapes at every position (already shifted, [H, W, 4A]), some tiny; deltas
    with widths and heights past TF's clip (on the tiny anchors too, which then stay inside the
    image); scores in steps of 1/8 (many ties, one -0.0); two image sizes and scales."""
    rng = np.random.default_rng(seed)
    cy, cx = np.meshgrid((np.arange(height) + 0.5) * stride, (np.arange(width) + 0.5) * stride, indexing="ij")
    sizes = np.array([[8.0, 8.0], [12.0, 24.0], [30.0, 16.0]])[:num_anchors]
    sizes = sizes * rng.uniform(0.7, 1.3, (height, width, num_anchors, 2))
    tiny = rng.uniform(size=(height, width, num_anchors)) < 0.15  # stay small even at the clip
    sizes[tiny] *= 0.02
    centres = np.stack([cy, cx], -1)[:, :, None, :] + rng.uniform(-2, 2, (height, width, num_anchors, 2))
    anchors = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1)
    anchors = anchors.reshape(height, width, 4 * num_anchors).astype(np.float32)
    deltas = rng.normal(0, 0.3, (num_images, height, width, num_anchors, 4))
    deltas[..., 2:][rng.uniform(size=deltas[..., 2:].shape) < 0.03] = 6.0  # past log(1000 / 16)
    deltas[:, tiny, 2:] = np.where(rng.uniform(size=deltas[:, tiny, 2:].shape) < 0.5, 6.0, deltas[:, tiny, 2:])
    deltas = deltas.reshape(num_images, height, width, 4 * num_anchors).astype(np.float32)
    scores = (rng.integers(0, 9, (num_images, height, width, num_anchors)) / 8).astype(np.float32)
    scores[0, 0, 0, 0], scores[0, 0, 1, 0] = -0.0, 0.0  # CUB sorts +0.0 first
    info = np.array([[height * stride, width * stride, 1.0, 0, 0],
                     [height * stride - 7, width * stride - 5, 1.5, 0, 0]], np.float32)[:num_images]
    return scores, deltas, info, anchors


def _proposal_graph(feeds, nms_threshold, min_size, post_nms_topn, pre_nms_topn=None, fed_topn=False):
    """Builds tf.image.generate_bounding_box_proposals in a TF graph; returns the jaxmeta graph, its
    fetches, the feed names, and TF's result where TF can run the op (None on a CPU-only TF)."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        inputs = [ph(tf, name, value) for name, value in feeds.items()]
        if fed_topn:
            topn = tf.compat.v1.placeholder(tf.int32, [], name="topn")
        else:
            topn = tf.constant(pre_nms_topn, tf.int32)
        rois, probs = tf.image.generate_bounding_box_proposals(
            *inputs, nms_threshold=nms_threshold, pre_nms_topn=topn, min_size=min_size, post_nms_topn=post_nms_topn
        )
        num_images = feeds["scores"].shape[0]
        assert rois.shape.as_list() == [num_images, post_nms_topn, 4]  # TF's shape function
        assert probs.shape.as_list() == [num_images, post_nms_topn]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        feed_dict = {t: v for t, v in zip(inputs, feeds.values())}
        if fed_topn:
            feed_dict[topn] = np.int32(pre_nms_topn)
        try:
            with tf.compat.v1.Session(graph=g) as sess:
                expected = sess.run([rois, probs], feed_dict)
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError):
            expected = None  # no kernel for this device: the op exists on the GPU only
    names = [name + ":0" for name in feeds] + (["topn:0"] if fed_topn else [])
    return jaxmeta.import_meta_graph(meta), [rois.name, probs.name], names, expected


PROPOSAL_CASES = {
    # (nms_threshold, pre_nms_topn, min_size, post_nms_topn)
    "top_n_cut_padded": (0.5, 40, 6.0, 60),
    "all_boxes_truncated": (0.7, 1000, 4.0, 7),
    "loose_nms": (0.3, 90, 9.0, 25),
    "no_min_size": (0.6, 60, 0.0, 12),
    "one_box": (0.7, 1, 0.0, 5),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case_name", list(PROPOSAL_CASES))
def test_generate_bounding_box_proposals(case_name, seed):
    """jaxmeta (with and without jit) against the NumPy transcription of TF's GPU kernel (and TF
    itself where it has a kernel): ties in score, boxes dropped by min_size and by the top-n cut,
    deltas past TF's clip, two images of different sizes and scales, zero padding."""
    nms_threshold, pre_nms_topn, min_size, post_nms_topn = PROPOSAL_CASES[case_name]
    scores, deltas, info, anchors = _proposal_data(seed)
    feeds = {"scores": scores, "bbox_deltas": deltas, "image_info": info, "anchors": anchors}
    want_rois, want_probs, _, dropped = _proposals_reference(
        scores, deltas, info, anchors, nms_threshold, pre_nms_topn, min_size, post_nms_topn
    )
    if min_size >= 6:
        assert dropped > 0  # the data does drop small boxes
    graph, fetches, names, tf_result = _proposal_graph(feeds, nms_threshold, min_size, post_nms_topn, pre_nms_topn)
    f = graph.function(fetches, feeds=names)
    for fn in (f, jax.jit(f)):
        rois, probs = fn({}, *feeds.values())
        assert_close(rois, want_rois, rtol=1e-5, atol=1e-4, what="rois")
        assert_close(probs, want_probs, rtol=0, atol=0, what="roi_probabilities")
    if tf_result is not None:
        assert_close(rois, tf_result[0], rtol=1e-5, atol=1e-4, what="rois (TF)")
        assert_close(probs, tf_result[1], rtol=0, atol=0, what="roi_probabilities (TF)")


def test_generate_bounding_box_proposals_reference_nms_matches_tf():
    """The transcription's NMS step picks what TF's CPU NonMaxSuppression picks from the same
    boxes in the same order (the same greedy rule; TF's CPU kernel divides where the GPU one
    multiplies, which only matters at an exact tie with the threshold)."""
    tf = get_tf()
    scores, deltas, info, anchors = _proposal_data(0)
    for threshold in (0.3, 0.7):
        _, _, nms_inputs, _ = _proposals_reference(scores, deltas, info, anchors, threshold, 1000, 4.0, 10)
        for boxes, _ in nms_inputs:
            yxyx = np.array([(b[1], b[0], b[3], b[2]) for b in boxes], np.float32)
            rank = np.arange(len(boxes), 0, -1).astype(np.float32)
            want = tf.image.non_max_suppression(yxyx, rank, len(boxes), iou_threshold=threshold).numpy()
            assert _greedy_nms(boxes) == want.tolist()
            assert 1 < len(want) < len(boxes)


def test_generate_bounding_box_proposals_ties_go_to_the_lower_index():
    """Two overlapping boxes with the same score: the first in [height, width, anchor] order is
    kept and comes first; a lower score elsewhere follows; the rest is zero padding."""
    anchors = np.array([[[0, 0, 10, 10]], [[1, 1, 11, 11]], [[20, 20, 30, 30]]], np.float32)  # [H=3, W=1, 4A]
    scores = np.array([0.5, 0.5, 0.25], np.float32).reshape(1, 3, 1, 1)
    deltas = np.zeros((1, 3, 1, 4), np.float32)
    info = np.array([[40, 40, 1, 0, 0]], np.float32)
    feeds = {"scores": scores, "bbox_deltas": deltas, "image_info": info, "anchors": anchors}
    graph, fetches, names, _ = _proposal_graph(feeds, 0.5, 1.0, 4, 10)
    f = graph.function(fetches, feeds=names)
    for fn in (f, jax.jit(f)):
        rois, probs = fn({}, *feeds.values())
        np.testing.assert_array_equal(rois[0], [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0], [0, 0, 0, 0]])
        np.testing.assert_array_equal(probs[0], [0.5, 0.25, 0, 0])


def test_generate_bounding_box_proposals_fed_top_n():
    """pre_nms_topn fed at run time: still jit-able (NMS then runs over every box, those past the
    top n masked), and the same result as a constant."""
    scores, deltas, info, anchors = _proposal_data(2)
    feeds = {"scores": scores, "bbox_deltas": deltas, "image_info": info, "anchors": anchors}
    want = _proposals_reference(scores, deltas, info, anchors, 0.5, 30, 6.0, 40)[:2]
    graph, fetches, names, _ = _proposal_graph(feeds, 0.5, 6.0, 40, 30, fed_topn=True)
    f = graph.function(fetches, feeds=names)
    for fn in (f, jax.jit(f)):
        rois, probs = fn({}, *feeds.values(), np.int32(30))
        assert_close(rois, want[0], rtol=1e-5, atol=1e-4, what="rois")
        assert_close(probs, want[1], rtol=0, atol=0, what="roi_probabilities")


def test_generate_bounding_box_proposals_has_no_gradient():
    """TF marks the op NotDifferentiable: no gradient flows to scores, deltas or anchors."""
    scores, deltas, info, anchors = _proposal_data(0)
    feeds = {"scores": scores, "bbox_deltas": deltas, "image_info": info, "anchors": anchors}
    graph, fetches, names, _ = _proposal_graph(feeds, 0.5, 4.0, 10, 50)
    f = graph.function(fetches, feeds=names)
    grads = jax.grad(lambda *xs: sum(o.sum() for o in f({}, *xs)), argnums=(0, 1, 3))(*feeds.values())
    for g in grads:
        assert not np.any(np.asarray(g))


@pytest.mark.parametrize("bad,match", [
    (dict(nms_threshold=1.5), "nms_threshold"),
    (dict(pre_nms_topn=0), "pre_nms_topn"),
    (dict(anchors=np.zeros((5, 6, 8), np.float32)), "4 x num_anchors"),
    (dict(anchors=np.zeros((1, 1, 12), np.float32)), "too small"),
])
def test_generate_bounding_box_proposals_bad_input(bad, match):
    scores, deltas, info, anchors = _proposal_data(0)
    feeds = {"scores": scores, "bbox_deltas": deltas, "image_info": info, "anchors": bad.get("anchors", anchors)}
    graph, fetches, names, _ = _proposal_graph(
        feeds, bad.get("nms_threshold", 0.5), 4.0, 10, bad.get("pre_nms_topn", 50)
    )
    f = graph.function(fetches, feeds=names)
    with pytest.raises(jaxmeta.GraphError, match=match):
        f({}, *feeds.values())


# -- glimpses --------------------------------------------------------------------------------------

GLIMPSE_IMAGES = (np.random.default_rng(3).uniform(-2, 5, (3, 9, 12, 2))).astype(np.float32)
# Inside, across each border, past a corner, wholly outside, and fractional offsets either side of 0.
GLIMPSE_OFFSETS = {
    "normalized": np.array([[0.1, -0.2], [-0.95, 0.9], [1.7, -1.6]], np.float32),
    "pixels": np.array([[2.6, 3.4], [-2.5, 10.2], [-30.0, 40.0]], np.float32),
}


@pytest.mark.parametrize("op", ["ExtractGlimpse", "ExtractGlimpseV2"])
@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("normalized", [True, False])
def test_extract_glimpse_matches_tf(op, centered, normalized):
    offsets = GLIMPSE_OFFSETS["normalized" if normalized else "pixels"]
    if normalized and not centered:
        offsets = (offsets + 1) / 2  # in [0, 1] and a little beyond

    def build(tf):
        images, at = ph(tf, "images", GLIMPSE_IMAGES), ph(tf, "offsets", offsets)
        return getattr(tf.raw_ops, op)(input=images, size=[4, 5], offsets=at, centered=centered,
                                       normalized=normalized, uniform_noise=False, noise="zero")

    compare_with_tf(build, {"images:0": GLIMPSE_IMAGES, "offsets:0": offsets})


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_extract_glimpse_noise_outside_the_image(noise):
    """Inside the image the glimpse is TF's exactly; outside it is noise from the key, within each
    image's (uniform) or channel's (gaussian) range, as TF's is."""
    offsets = GLIMPSE_OFFSETS["normalized"]

    def build(tf):
        images, at = ph(tf, "images", GLIMPSE_IMAGES), ph(tf, "offsets", offsets)
        return tf.image.extract_glimpse(images, [6, 6], at, noise=noise)

    feeds = {"images:0": GLIMPSE_IMAGES, "offsets:0": offsets}
    run = run_tf(build, feeds)
    f = jax.jit(run.graph.function(run.fetch_names[0], feeds=list(feeds)))
    got = np.asarray(f({}, *feeds.values(), key=jax.random.key(0)))
    want = run.expected[0]
    ones = {**feeds, "images:0": np.ones_like(GLIMPSE_IMAGES)}
    zero = run_tf(lambda tf: tf.image.extract_glimpse(ph(tf, "images", GLIMPSE_IMAGES), [6, 6],
                                                      ph(tf, "offsets", offsets), noise="zero"), ones).expected[0]
    inside = zero == 1
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(got[inside], want[inside])
    per_channel = noise == "gaussian"
    axes = (1, 2) if per_channel else (1, 2, 3)
    lo = GLIMPSE_IMAGES.min(axis=axes, keepdims=True)
    hi = GLIMPSE_IMAGES.max(axis=axes, keepdims=True)
    for values in (got, want):
        assert np.all((values >= lo) & (values <= hi))
    assert not np.array_equal(got, np.asarray(f({}, *feeds.values(), key=jax.random.key(1))))
    with pytest.raises(jaxmeta.FeedError, match="draws random numbers"):
        f({}, *feeds.values())
