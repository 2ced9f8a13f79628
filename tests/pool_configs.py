"""Pooling test configurations (shape, kernel, stride, padding, dilation, ceil_mode) shared by the
pooling tests: their pytest ids and the pooled output's shape from the reference's size rule."""
from fasttrain.kernels import pooling as ref


def config_ids(configs):
    return ["{}-k{}-s{}-p{}-d{}-{}".format(*c[:5], "ceil" if c[5] else "floor") for c in configs]


def out_shape(shape, k, s, p, d, ceil):
    n, c, h, w = shape
    return n, c, ref.out_size(h, k[0], s[0], p[0], d[0], ceil), ref.out_size(w, k[1], s[1], p[1], d[1], ceil)
