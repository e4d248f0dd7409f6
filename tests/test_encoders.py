"""The encoders' pure-torch contract (no Spark): they learn, tokens are in range, seeds reproduce, artifacts
round-trip, and hand-computed codes for the closed-form parts (SimHash bits, FSQ mixed radix, OPQ rotation)."""
import numpy as np
import pytest
import torch

from sid_spark.config import ConfigError
from sid_spark.encoders import ENCODERS, get_encoder, load_encoder
from sid_spark.errors import ArtifactError
from sid_spark.kernels import kmeans as km

NEURAL = dict(hidden=(64,), latent=8, epochs=20, batch_size=256, lr=3e-3, init_rows=1024)
SMALL = {
    "vqvae": dict(codebook_size=16, **NEURAL),
    "rqvae": dict(levels=2, codebook_size=16, **NEURAL),
    "fsq": dict(levels=((4, 4), (4, 4)), **NEURAL),
    "rqopq": dict(rk_levels=1, codebook_size=16, opq_subspaces=2, opq_codebook_size=16, init_rows=1024),
    "opmq": dict(experts=2, subspace_dim=4, codebook_size=16, **NEURAL),
    "simhash": dict(tokens=2, bits=4),
}


@pytest.fixture(scope="module")
def clustered():
    """32 well separated blobs in 16-d, 100 points each."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((32, 16)) * 3
    return np.concatenate([c + 0.3 * rng.standard_normal((100, 16)) for c in centers]).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(clustered):
    torch.set_num_threads(1)
    return {name: get_encoder(name, seed=3, **p).fit(clustered) for name, p in SMALL.items()}


def rel_error(x, x_hat):
    x = torch.as_tensor(x).double()
    return float(((x - torch.as_tensor(x_hat).double()) ** 2).sum() / (x ** 2).sum())


def random_codebook_error(x, sizes, seed):
    """Residual quantisation with untrained codebooks of the same sizes: level l's codewords are random rows of
    the residual the earlier levels leave."""
    rng = np.random.default_rng(seed)
    r = torch.from_numpy(x).clone()
    for k in sizes:
        cb = r[torch.from_numpy(rng.choice(len(x), k, replace=False))].clone()
        r -= cb[km.assign(r, cb)[0]]
    return float((r.double() ** 2).sum() / (torch.from_numpy(x).double() ** 2).sum())


def test_registry_holds_the_six_encoders():
    assert sorted(ENCODERS) == ["fsq", "opmq", "rqopq", "rqvae", "simhash", "vqvae"]


@pytest.mark.parametrize("name", [n for n in SMALL if n != "simhash"])
def test_trained_encoders_beat_a_random_codebook(name, fitted, clustered):
    enc = fitted[name]
    err = rel_error(clustered, enc.reconstruct(clustered))
    baseline = min(random_codebook_error(clustered, enc.token_sizes, s) for s in range(3))
    assert err < 0.8 * baseline, (err, baseline)


def test_simhash_decoder_is_no_worse_than_the_mean(fitted, clustered):
    """The least-squares decoder has a bias column, so on its own sample it cannot lose to predicting the mean."""
    err = rel_error(clustered, fitted["simhash"].reconstruct(clustered))
    mean_err = rel_error(clustered, np.tile(clustered.mean(0), (len(clustered), 1)))
    assert err <= mean_err + 1e-6


@pytest.mark.parametrize("name", list(SMALL))
def test_tokens_in_range_and_shape(name, fitted, clustered):
    enc = fitted[name]
    codes = enc.encode(clustered)
    assert codes.dtype == torch.int64 and codes.shape == (len(clustered), enc.n_tokens)
    assert (codes >= 0).all()
    assert (codes < torch.tensor(enc.token_sizes)).all()


@pytest.mark.parametrize("name", list(SMALL))
def test_two_fits_with_one_seed_agree(name, fitted, clustered):
    again = get_encoder(name, seed=3, **SMALL[name]).fit(clustered)
    assert again.model_id == fitted[name].model_id
    assert torch.equal(again.encode(clustered), fitted[name].encode(clustered))


@pytest.mark.parametrize("name", list(SMALL))
def test_codes_do_not_depend_on_batch_composition(name, fitted, clustered):
    """Encoding in fixed padded blocks: a row's code is the same alone, in a slice, or in the whole matrix."""
    enc = fitted[name]
    whole = enc.encode(clustered)
    parts = torch.cat([enc.encode(clustered[:1]), enc.encode(clustered[1:777]), enc.encode(clustered[777:])])
    assert torch.equal(whole, parts)


@pytest.mark.parametrize("name", list(SMALL))
def test_save_load_round_trip(name, fitted, clustered, tmp_path):
    enc = fitted[name]
    model_id = enc.save(str(tmp_path / name))
    back = load_encoder(str(tmp_path / name))
    assert type(back) is type(enc) and back.model_id == model_id == enc.model_id
    assert back.params == enc.params and back.dim == enc.dim
    codes = enc.encode(clustered)
    assert torch.equal(back.encode(clustered), codes)
    assert torch.equal(back.decode(codes), enc.decode(codes))


def test_loading_another_kind_is_refused(fitted, tmp_path):
    fitted["fsq"].save(str(tmp_path / "m"))
    with pytest.raises(ArtifactError, match="encoder:fsq"):
        load_encoder(str(tmp_path / "m"), name="rqvae")


def test_bad_keys_name_the_key():
    with pytest.raises(ConfigError, match="unknown encoder key 'codebooksize'"):
        get_encoder("rqvae", codebooksize=8)
    with pytest.raises(ConfigError, match="'levels'"):
        get_encoder("fsq", levels=[[8, 1]])
    with pytest.raises(ConfigError, match="'subspace_dim'"):
        get_encoder("opmq", experts=4, subspace_dim=16, latent=32)
    with pytest.raises(ConfigError, match="unknown encoder 'pq'"):
        get_encoder("pq")


def test_simhash_tokens_by_hand():
    """planes = +-unit vectors, so bit i is the sign of one coordinate; token = sum_i 2^(i-1) b_i."""
    enc = get_encoder("simhash", tokens=2, bits=3, block_rows=4).fit(np.ones((2, 3), np.float32))
    enc.planes = torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]])
    x = np.array([[1., -2, 3], [-1, 2, -3], [0.5, 0.5, -0.5]], np.float32)
    # row 0: bits (1,0,1) -> 1 + 4 = 5; negated planes (0,1,0) -> 2
    # row 1: (0,1,0) -> 2; (1,0,1) -> 5.  row 2: (1,1,0) -> 3; (0,0,1) -> 4
    assert enc.encode(x).tolist() == [[5, 2], [2, 5], [3, 4]]


def test_simhash_planes_are_seeded_standard_normal():
    a = get_encoder("simhash", seed=11, tokens=4, bits=8).make_planes(64)
    b = get_encoder("simhash", seed=11, tokens=4, bits=8).make_planes(64)
    assert torch.equal(a, b) and a.shape == (32, 64)
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1) < 0.05


def test_fsq_mixed_radix_by_hand(fitted, clustered):
    """Token = q_1 + L_1 q_2 (levels [4, 4]); decode reads the digits back, so decode(encode) equals decoding the
    rounded levels directly."""
    enc = fitted["fsq"]
    x = torch.from_numpy(clustered[:50])
    with torch.no_grad():
        q = torch.round(torch.sigmoid(enc.net.ae.encode(x)) * 3).to(torch.int64)  # levels 4 -> 0..3
        want = torch.stack([q[:, 0] + 4 * q[:, 1], q[:, 2] + 4 * q[:, 3]], 1)
        assert torch.equal(enc.encode(x), want)
        direct = enc.net.ae.decode(2 * q.float() / 3 - 1)
    torch.testing.assert_close(enc.decode(want), direct)


def test_fsq_uses_many_codes(fitted, clustered):
    """No codebook, no collapse: FSQ's grid spreads 3,200 items over more than a quarter of each token's values."""
    codes = fitted["fsq"].encode(clustered)
    assert all(len(torch.unique(codes[:, t])) > 4 for t in range(2))


def test_rqopq_rotation_is_orthogonal_and_opq_helps(fitted, clustered):
    enc = fitted["rqopq"]
    r = enc.rotation.double()
    torch.testing.assert_close(r @ r.T, torch.eye(r.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    hist = enc.summary["history"]
    assert hist[-1]["rel_error"] <= hist[0]["rel_error"] + 1e-9


def test_rqopq_decode_by_hand():
    """x_hat = c_1[s_1] + [C'_1[s_2], C'_2[s_3]] R^T."""
    enc = get_encoder("rqopq", rk_levels=1, codebook_size=2, opq_subspaces=2, opq_codebook_size=2)
    enc.dim = 2
    enc.codebooks = [torch.tensor([[1., 1.], [10., 10.]])]
    enc.sub_codebooks = [torch.tensor([[0.], [2.]]), torch.tensor([[0.], [3.]])]
    enc.rotation = torch.tensor([[0., 1.], [1., 0.]])  # swaps the two coordinates
    x_hat = enc.decode(torch.tensor([[1, 1, 0]]))
    assert x_hat.tolist() == [[10., 12.]]
    assert enc.encode(np.array([[10., 12.]], np.float32)).tolist() == [[1, 1, 0]]


def test_opmq_experts_stay_nearly_orthogonal(fitted):
    enc = fitted["opmq"]
    assert float(enc.ortho_penalty().detach()) < 0.05


def test_rqvae_restarts_dead_codes_by_splitting(clustered):
    from sid_spark.encoders.common import restart_dead

    cb = torch.nn.Parameter(torch.tensor([[0., 0.], [5., 5.], [9., 9.]]))
    usage = torch.tensor([0, 7, 2])
    assert restart_dead(cb, usage) == 1
    # code 0 is re-seeded beside the largest cluster's centre (code 1), both nudged apart by eps
    assert torch.allclose(cb.data[0], cb.data[1], atol=0.2) and not torch.equal(cb.data[0], cb.data[1])
    assert usage.tolist() == [0, 0, 0]
