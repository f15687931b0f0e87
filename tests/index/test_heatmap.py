"""The relevance read-outs: checked against a hand-rolled computation of the same formulas,
and on the bundled model against the shapes' known boxes."""

from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from index.errors import HeatmapUnavailable
from index.heatmap import Heatmaps, peak_point, relevance_maps, relevance_stages, vit_tower
from index.heatmap_quality import Scores, crowded
from index.synthetic import render

TEXT = dict(context_length=77, vocab_size=49408, width=16, heads=2, layers=1)


def tiny_clip(vision: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()
    return SimpleNamespace(model=model, device=torch.device("cpu"), dtype=torch.float32,
                           name="tiny test model")


@pytest.fixture
def one_thread():
    """One torch thread for this test's passes on the main thread: on a busy 2-core machine a
    second thread mostly waits for a core (many small passes: 1 s instead of 15)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_vit():
    return tiny_clip(dict(image_size=32, patch_size=8, layers=2, width=32, head_width=16))


def hand_rolled(v, pixels):
    """The ViT forward written out from its weights, attention probabilities kept."""
    x = v.conv1(pixels).flatten(2).transpose(1, 2)
    cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding)
    probs, outputs = [], []
    for blk in v.transformer.resblocks:
        attn = blk.attn
        heads, width = attn.num_heads, x.shape[-1]
        d = width // heads
        h = blk.ln_1(x)
        q, k, val = (h @ attn.in_proj_weight.T + attn.in_proj_bias).split(width, dim=-1)

        q, k, val = (t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (q, k, val))
        a = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
        o = (a @ val).transpose(1, 2).reshape(x.shape)
        x = x + o @ attn.out_proj.weight.T + attn.out_proj.bias
        x = x + blk.mlp(blk.ln_2(x))
        probs.append(a)
        outputs.append(x)
    pooled = v.ln_post(x[:, 0]) @ v.proj
    return pooled, probs, outputs


def _peak1(rel):
    return rel / rel.max()


def test_hand_rolled_forward_is_the_stock_tower(tiny_vit):
    v = tiny_vit.model.visual
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled, _, _ = hand_rolled(v, pixels)
        assert torch.allclose(pooled, v(pixels), atol=1e-5)


@pytest.mark.parametrize("method", ["legrad", "chefer"])
def test_read_out_matches_an_independent_autograd_computation(tiny_vit, method):
    v = tiny_vit.model.visual
    gen = torch.Generator().manual_seed(2)
    pixels = torch.randn(1, 3, 32, 32, generator=gen)
    targets = torch.randn(2, 16, generator=gen)
    got = relevance_maps(tiny_vit, pixels, targets, method)
    assert got.shape == (2, 4, 4)
    for t in range(2):
        goal = F.normalize(targets[t], dim=-1)
        pooled, probs, outputs = hand_rolled(v, pixels)
        if method == "legrad":  # sum over blocks of mean(heads, rows) relu(d s_l / d A_l)
            total = torch.zeros(17)
            for a, x in zip(probs, outputs, strict=True):
                s = F.normalize(v.ln_post(x.mean(dim=1)) @ v.proj, dim=-1)[0] @ goal
                (g,) = torch.autograd.grad(s, a, retain_graph=True)
                total += g[0].clamp(min=0).mean(dim=0).mean(dim=0)
            want = total[1:]
        else:  # R <- R + mean_heads relu(dS/dA * A) R, read at the class token's row
            s = F.normalize(pooled, dim=-1)[0] @ goal
            grads = torch.autograd.grad(s, probs)
            r = torch.eye(17)
            for a, g in zip(probs, grads, strict=True):
                r = r + (g[0] * a[0]).clamp(min=0).mean(dim=0) @ r
            want = r[0, 1:]
        want = want.detach().numpy().reshape(4, 4)
        assert want.max() > 0
        np.testing.assert_allclose(got[t], want / want.max(), atol=1e-5)


def test_stages_give_the_same_maps_and_leave_no_hooks(tiny_vit):
    v = tiny_vit.model.visual
    gen = torch.Generator().manual_seed(3)
    pixels, targets = torch.randn(1, 3, 32, 32, generator=gen), torch.randn(3, 16, generator=gen)
    stages = relevance_stages(tiny_vit, pixels, targets, "legrad")
    assert len(stages) == 1 + 2 + 1  # embeddings, one step per block (forward and backward), finish
    with torch.inference_mode():  # as on the encoder's model thread
        out = [s() for s in stages][-1]
    np.testing.assert_allclose(out, relevance_maps(tiny_vit, pixels, targets, "legrad"), atol=1e-6)
    for blk in v.transformer.resblocks:
        assert "forward" not in vars(blk.attn)
        assert not blk._forward_hooks and not blk._forward_pre_hooks
    with torch.no_grad():  # the stock pass is untouched
        assert torch.allclose(v(pixels), hand_rolled(v, pixels)[0], atol=1e-5)


def test_any_open_clip_vit_works(vitb32, one_thread):
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    maps = relevance_maps(vitb32, pixels, torch.randn(1, vitb32.dim))
    assert maps.shape == (1, 7, 7) and np.isfinite(maps).all() and maps.max() == pytest.approx(1)


def test_a_resnet_tower_says_not_available():
    rn = tiny_clip(dict(layers=(1, 1, 1, 1), width=8, image_size=32))
    assert vit_tower(rn.model) is None
    with pytest.raises(HeatmapUnavailable, match="not available for this model"):
        relevance_maps(rn, torch.randn(1, 3, 32, 32), torch.randn(1, 16))


def test_bundled_model_points_at_the_named_shape(tiny, one_thread):
    """On crowded pictures the model never saw, the named shape holds the map's peak far
    more often than chance, and more of its relevance than a random map's."""
    picked = crowded(120, 9090)[:16]
    legrad, rnd = Scores(), Scores()
    rng = np.random.default_rng(0)
    for scene in picked:
        pixels = tiny.preprocess(render(scene)).unsqueeze(0)
        with torch.inference_mode():
            targets = tiny.model.encode_text(tiny.tokenizer(scene.concepts)).clone()
        for heat, obj in zip(relevance_maps(tiny, pixels, targets), scene.objects, strict=True):
            legrad.add(heat, obj.box)
            rnd.add(rng.random(heat.shape).astype(np.float32), obj.box)
    assert len(legrad.pointing) >= 40
    assert legrad.summary()["pointing"] >= 0.7
    assert legrad.summary()["energy"] >= 2 * rnd.summary()["energy"]


def test_block_by_block_and_whole_pass_agree(tiny_vit, monkeypatch):
    import index.heatmap as heatmap

    gen = torch.Generator().manual_seed(5)
    pixels, targets = torch.randn(1, 3, 32, 32, generator=gen), torch.randn(2, 16, generator=gen)
    stepwise = relevance_maps(tiny_vit, pixels, targets, "legrad")
    monkeypatch.setattr(heatmap, "_walkable", lambda visual: False)
    assert len(relevance_stages(tiny_vit, pixels, targets, "legrad")) == 1 + 2 + 1
    np.testing.assert_allclose(relevance_maps(tiny_vit, pixels, targets, "legrad"), stepwise, atol=1e-6)


def grid(hot: dict, rows: int = 8, cols: int = 8) -> np.ndarray:
    heat = np.zeros((rows, cols), np.float32)
    for (r, c), v in hot.items():
        heat[r, c] = v
    return heat


def test_peak_point_is_the_hot_patch_centre_when_alone():
    assert peak_point(grid({(2, 5): 1.0})) == pytest.approx((5.5 / 8, 2.5 / 8))


def test_peak_point_leans_towards_the_hot_neighbours():
    # two equally hot patches side by side: the point is on the edge they share
    assert peak_point(grid({(2, 3): 1.0, (2, 4): 1.0})) == pytest.approx((4 / 8, 2.5 / 8))
    # a weaker neighbour below pulls it part of the way, by its share of the relevance
    x, y = peak_point(grid({(2, 3): 1.0, (3, 3): 0.5}))
    assert x == pytest.approx(3.5 / 8) and y == pytest.approx((2.5 + 0.5 / 1.5) / 8)


def test_peak_point_ignores_relevance_beyond_the_neighbours():
    far = grid({(2, 3): 1.0, (2, 5): 0.9, (7, 7): 0.95})
    assert peak_point(far) == pytest.approx((3.5 / 8, 2.5 / 8))


def test_peak_point_at_the_edge_and_on_an_empty_map():
    x, y = peak_point(grid({(0, 7): 1.0, (0, 6): 1.0}))
    assert (x, y) == pytest.approx((7 / 8, 0.5 / 8))
    assert peak_point(np.zeros((4, 4), np.float32)) == pytest.approx((0.5 / 4, 0.5 / 4))


def test_pointing_counts_an_object_straddling_two_patches():
    """The object spans x 0.45-0.70: its hottest patch's centre (0.4375) lies just outside,
    but the patch beside it, nearly as hot, places the peak inside."""
    heat = grid({(3, 3): 1.0, (3, 4): 0.9})
    s = Scores()
    s.add(heat, (0.45, 0.30, 0.70, 0.55))
    assert s.pointing == [True]
    assert s.argmax == [False]  # the upsampled map's hottest pixel is the left patch's


def test_json_carries_each_maps_peak_point():
    heat = Heatmaps(["query"], grid({(1, 1): 1.0, (1, 2): 1.0})[None], "legrad", "m")
    got = heat.as_json()["maps"][0]
    assert got["peak"] == [pytest.approx(2 / 8), pytest.approx(1.5 / 8)]
    assert np.array_equal(np.array(got["relevance"]), heat.maps[0])
