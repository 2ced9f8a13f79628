"""Preprocessing: statistics come from the training data (checked against float64 formulas and
an SVD computed here), the same statistics are applied to test data, whitening yields identity
covariance on the training data, and wrong shapes raise clear errors."""
import numpy as np
import pytest

from fasttrain.data.preprocess import PCA, ChannelStandardizer, MeanImage, Whitening


def correlated(n, d, seed=0, scales=None):
    r = np.random.default_rng(seed)
    q, _ = np.linalg.qr(r.standard_normal((d, d)))
    scales = np.linspace(3.0, 0.2, d) if scales is None else np.asarray(scales)
    return (r.standard_normal((n, d)) * scales) @ q.T + r.standard_normal(d)


def svd_stats(x):
    """Mean, eigenvalues (descending) and eigenvectors of the biased covariance via SVD."""
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, s ** 2 / len(x), vt.T


def test_channel_standardizer_uses_training_statistics():
    r = np.random.default_rng(0)
    train = (r.standard_normal((9, 3, 5, 7)) * [[[[2.0]], [[0.5]], [[1.0]]]] + [[[[1.0]], [[-3.0]], [[0.0]]]]).astype(np.float32)
    test = r.standard_normal((4, 3, 5, 7)).astype(np.float32)
    s = ChannelStandardizer().fit(train)
    z = s(train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.astype(np.float64).mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(z.astype(np.float64).std(axis=(0, 2, 3)), 1, atol=1e-5)
    t64 = train.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    expected = (test - t64.mean(axis=1)[:, None, None]) / t64.std(axis=1)[:, None, None]
    np.testing.assert_allclose(s.transform(test), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.inverse_transform(s(test)), test, atol=1e-5)
    with pytest.raises(ValueError, match=r"fitted on 3 channels, expected \(N, 3, \.\.\.\), got shape \(4, 2, 5, 7\)"):
        s(test[:, :2])
    with pytest.raises(RuntimeError, match="call fit"):
        ChannelStandardizer()(test)
    s2 = ChannelStandardizer()
    s2.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(s2(test), s(test))


def test_channel_standardizer_on_vectors_and_batch_one():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(ChannelStandardizer().fit(x)(x), [[-1, -1], [1, 1]], atol=1e-7)
    one = np.ones((1, 2, 3, 3))
    z = ChannelStandardizer(eps=1e-3).fit(one)(one)   # zero variance: eps keeps it finite
    np.testing.assert_array_equal(z, 0)


def test_mean_image_subtracts_the_training_mean_per_pixel():
    r = np.random.default_rng(1)
    train, test = r.standard_normal((13, 2, 3, 5)), r.standard_normal((3, 2, 3, 5))
    m = MeanImage().fit(train)
    np.testing.assert_allclose(m(train).mean(axis=0), 0, atol=1e-15)
    np.testing.assert_allclose(m(test), test - train.mean(axis=0), atol=1e-15)
    with pytest.raises(ValueError, match=r"fitted on examples of shape \(2, 3, 5\), expected \(N, 2, 3, 5\), got shape \(3, 2, 5, 3\)"):
        m(test.transpose(0, 1, 3, 2))
    assert MeanImage().fit(train.astype(np.float32))(test.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("n,d,k", [(50, 7, 3), (31, 5, 5), (200, 13, 1), (1000, 2, 2)])
def test_pca_matches_svd_and_decorrelates(n, d, k):
    x = correlated(n, d)
    mean, vals, vecs = svd_stats(x)
    p = PCA(k).fit(x)
    np.testing.assert_allclose(p.eigvals, vals[:k], rtol=1e-10)
    z = p(x)
    assert z.shape == (n, k)
    np.testing.assert_allclose(z.T @ z / n, np.diag(vals[:k]), atol=1e-9 * vals[0])
    np.testing.assert_allclose(np.abs(z), np.abs((x - mean) @ vecs[:, :k]), atol=1e-9)   # up to each axis' sign
    if k == d:
        np.testing.assert_allclose(p.inverse_transform(z), x, atol=1e-10)


def test_pca_variance_fraction_chooses_the_fewest_components():
    x = correlated(400, 6, scales=[4.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    _, vals, _ = svd_stats(x)
    frac = np.cumsum(vals) / vals.sum()
    for f in (0.3, 0.9, 0.99, 1.0):
        expected = int(np.argmax(frac >= f - 1e-12)) + 1
        p = PCA(f).fit(x)
        assert p.components.shape == (6, expected)
        assert p.explained_variance_ratio.sum() >= f - 1e-12
    with pytest.raises(ValueError, match=r"PCA\(n_components\): expected None, an int >= 1 or a variance fraction"):
        PCA(1.5)
    with pytest.raises(ValueError, match="more components than dimensions D=6"):
        PCA(7).fit(x)


def test_pca_uses_training_statistics_on_test_data_and_checks_shapes():
    train, test = correlated(80, 4, seed=0), correlated(10, 4, seed=1) * 3
    mean, _, vecs = svd_stats(train)
    p = PCA(2).fit(train)
    np.testing.assert_allclose(np.abs(p(test)), np.abs((test - mean) @ vecs[:, :2]), atol=1e-10)
    with pytest.raises(ValueError, match=r"PCA.transform\(x\): fitted on D=4, expected \(N, 4\), got shape \(10, 3\)"):
        p(test[:, :3])
    with pytest.raises(ValueError, match=r"expected vectors \(N, D\), got shape \(2, 1, 2, 2\); flatten images"):
        p(test[:2].reshape(2, 1, 2, 2))
    q = PCA(2)
    q.load_state_dict(p.state_dict())
    np.testing.assert_array_equal(q(test), p(test))
    assert p(test.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("zca", [False, True])
def test_whitening_gives_identity_covariance_on_training_data(zca):
    n, d, eps = 300, 9, 1e-5
    x = correlated(n, d)
    w = Whitening(eps=eps, zca=zca).fit(x)
    z = w(x)
    _, vals, vecs = svd_stats(x)
    cov = z.T @ z / n
    if zca:   # cov = U diag(l/(l+eps)) U^T
        np.testing.assert_allclose(cov, vecs @ np.diag(vals / (vals + eps)) @ vecs.T, atol=1e-10)
    else:
        np.testing.assert_allclose(cov, np.diag(vals / (vals + eps)), atol=1e-10)
    np.testing.assert_allclose(cov, np.eye(d), atol=5e-4)     # off by eps / smallest eigenvalue (~1e-5 / 0.04)
    np.testing.assert_allclose(w.inverse_transform(z), x, atol=1e-9)


def test_zca_on_test_data_is_the_symmetric_training_matrix():
    train, test = correlated(120, 5, seed=2), correlated(7, 5, seed=3)
    mean, vals, vecs = svd_stats(train)
    zca = vecs @ np.diag(1 / np.sqrt(vals + 1e-3)) @ vecs.T   # sign-free, so comparable exactly
    np.testing.assert_allclose(Whitening(eps=1e-3, zca=True).fit(train)(test), (test - mean) @ zca, atol=1e-10)
    pca_white = Whitening(2, eps=1e-3).fit(train)(test)
    np.testing.assert_allclose(np.abs(pca_white), np.abs((test - mean) @ vecs[:, :2] / np.sqrt(vals[:2] + 1e-3)), atol=1e-10)


def test_whitening_refuses_zero_variance_without_eps():
    x = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 3.0]])     # first column constant
    with pytest.raises(ValueError, match="zero variance and eps = 0"):
        Whitening(eps=0).fit(x)
    z = Whitening(1, eps=0).fit(x)(x)                      # dropping that direction is fine
    np.testing.assert_allclose(z.T @ z / 3, [[1.0]], atol=1e-12)
    single = Whitening(eps=1e-2).fit(np.array([[3.0, -1.0]]))   # N = 1: zero covariance, finite output
    np.testing.assert_array_equal(single(np.array([[3.0, -1.0]])), 0)
