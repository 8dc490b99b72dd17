"""``fastmae convert``: fastmae/official <-> HF ViTMAE <-> timm, checked by equal features and loss.

transformers is not a dependency: the HF side is checked with a forward pass written here from
ViTMAE's published architecture (separate q/k/v, layernorm_before/after, eps from config.json),
run on the converted state dict; when transformers happens to be importable, one more test loads
the converted folder into ViTMAEForPreTraining itself.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fastmae.convert import from_hf, from_timm, main, to_hf
from fastmae.models import create_model, load_official_checkpoint

NAME = "mae_vit_test"  # 16 px, patch 4, 2 x 32 (2 heads), decoder 1 x 16 (2 heads)


def hf_layer(x, sd, prefix, heads, eps):
    n, length, dim = x.shape
    h = F.layer_norm(x, (dim,), sd[f"{prefix}layernorm_before.weight"], sd[f"{prefix}layernorm_before.bias"], eps)

    def project(name):
        layer = f"{prefix}attention.attention.{name}"
        y = F.linear(h, sd[f"{layer}.weight"], sd[f"{layer}.bias"])
        return y.view(n, length, heads, dim // heads).transpose(1, 2)

    q, k, v = project("query"), project("key"), project("value")
    scores = (q @ k.transpose(-1, -2)) / (dim // heads) ** 0.5
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, dim)
    x = x + F.linear(context, sd[f"{prefix}attention.output.dense.weight"], sd[f"{prefix}attention.output.dense.bias"])
    h = F.layer_norm(x, (dim,), sd[f"{prefix}layernorm_after.weight"], sd[f"{prefix}layernorm_after.bias"], eps)
    h = F.gelu(F.linear(h, sd[f"{prefix}intermediate.dense.weight"], sd[f"{prefix}intermediate.dense.bias"]))
    return x + F.linear(h, sd[f"{prefix}output.dense.weight"], sd[f"{prefix}output.dense.bias"])


def hf_encoder(sd, cfg, imgs, noise=None, root="vit."):
    eps, p = cfg["layer_norm_eps"], cfg["patch_size"]
    e = f"{root}embeddings."
    x = F.conv2d(imgs, sd[f"{e}patch_embeddings.projection.weight"], sd[f"{e}patch_embeddings.projection.bias"],
                 stride=p).flatten(2).transpose(1, 2)
    pos = sd[f"{e}position_embeddings"]
    x = x + pos[:, 1:]
    ids_restore = mask = None
    if noise is not None:
        keep = int(x.shape[1] * (1 - cfg["mask_ratio"]))
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, x.shape[-1]))
        mask = torch.ones_like(noise)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
    x = torch.cat([(sd[f"{e}cls_token"] + pos[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
    for i in range(cfg["num_hidden_layers"]):
        x = hf_layer(x, sd, f"{root}encoder.layer.{i}.", cfg["num_attention_heads"], eps)
    x = F.layer_norm(x, (x.shape[-1],), sd[f"{root}layernorm.weight"], sd[f"{root}layernorm.bias"], eps)
    return x, mask, ids_restore


def hf_pretraining_loss(sd, cfg, imgs, noise):
    latent, mask, ids_restore = hf_encoder(sd, cfg, imgs, noise)
    x = F.linear(latent, sd["decoder.decoder_embed.weight"], sd["decoder.decoder_embed.bias"])
    tokens = sd["decoder.mask_token"].expand(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], -1)
    rest = torch.cat([x[:, 1:], tokens], dim=1)
    rest = torch.gather(rest, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([x[:, :1], rest], dim=1) + sd["decoder.decoder_pos_embed"]
    for j in range(cfg["decoder_num_hidden_layers"]):
        x = hf_layer(x, sd, f"decoder.decoder_layers.{j}.", cfg["decoder_num_attention_heads"], cfg["layer_norm_eps"])
    x = F.layer_norm(x, (x.shape[-1],), sd["decoder.decoder_norm.weight"], sd["decoder.decoder_norm.bias"],
                     cfg["layer_norm_eps"])
    pred = F.linear(x, sd["decoder.decoder_pred.weight"], sd["decoder.decoder_pred.bias"])[:, 1:]
    p = cfg["patch_size"]
    n, c, h, w = imgs.shape
    target = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, p * p * c)
    if cfg["norm_pix_loss"]:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = create_model(NAME, norm_pix_loss=True)
    with torch.no_grad():  # move every tensor away from its init so that a mix-up shows
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    path = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict(), "args": {"model": NAME, "norm_pix_loss": True}}, path)
    return model.eval(), path


def test_fastmae_to_hf_gives_equal_features_and_loss_and_back(trained, tmp_path, capsys):
    model, path = trained
    folder = tmp_path / "hf"
    assert main([str(path), str(folder), "--to", "hf"]) == 0
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["architectures"] == ["ViTMAEForPreTraining"]
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["decoder_num_attention_heads"]) == (32, 2, 2)
    assert cfg["norm_pix_loss"] is True and cfg["intermediate_size"] == 128
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert "vit.encoder.layer.1.attention.attention.key.weight" in sd
    assert "decoder.decoder_layers.0.output.dense.bias" in sd
    imgs, noise = torch.randn(3, 3, 16, 16), torch.rand(3, 16)
    with torch.no_grad():
        ours = model.forward_features(imgs)
        theirs, _, _ = hf_encoder(sd, cfg, imgs)
        torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-5)
        loss = model(imgs, 0.75, noise)[0]
        torch.testing.assert_close(hf_pretraining_loss(sd, cfg, imgs, noise), loss, atol=2e-5, rtol=1e-5)
        # with HF's default eps the same weights give other numbers: the carried 1e-6 matters
        changed = hf_encoder(sd, {**cfg, "layer_norm_eps": 1e-12}, imgs)[0]
        assert not torch.equal(changed, theirs)

    back = tmp_path / "back.pth"
    assert main([str(folder), str(back), "--to", "fastmae"]) == 0
    returned = torch.load(back, weights_only=True)
    assert returned["args"]["model"] == "mae_vit_test_patch4" and returned["hf_layer_norm_eps"] == 1e-6
    for key, value in model.state_dict().items():
        assert torch.equal(returned["model"][key], value), key
    assert "warning" not in capsys.readouterr().err


def test_hf_source_with_hf_default_eps_warns_and_keeps_the_value(trained, tmp_path, capsys):
    _, path = trained
    folder = tmp_path / "hf"
    assert main([str(path), str(folder), "--to", "hf"]) == 0
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["layer_norm_eps"]  # HF's default then applies: 1e-12
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main([str(folder), str(tmp_path / "x.pth"), "--to", "fastmae"]) == 0
    assert "layer_norm_eps 1e-12" in capsys.readouterr().err
    assert torch.load(tmp_path / "x.pth", weights_only=True)["hf_layer_norm_eps"] == 1e-12


def test_encoder_only_to_hf_model_and_timm_both_ways(trained, tmp_path, capsys):
    model, _ = trained
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": model.encoder_state_dict()}, encoder)
    folder = tmp_path / "hf_encoder"
    assert main([str(encoder), str(folder), "--to", "hf", "--model", NAME]) == 0
    cfg = json.loads((folder / "config.json").read_text())
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert cfg["architectures"] == ["ViTMAEModel"] and all(not k.startswith(("vit.", "decoder")) for k in sd)
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(hf_encoder(sd, cfg, imgs, root="")[0], model.forward_features(imgs),
                                   atol=2e-5, rtol=1e-5)

    timm_path = tmp_path / "timm.pth"
    full = tmp_path / "full.pth"
    torch.save({"model": model.state_dict(), "args": {"model": NAME}}, full)
    assert main([str(full), str(timm_path), "--to", "timm"]) == 0
    assert "left out" in capsys.readouterr().out
    timm_state = torch.load(timm_path, weights_only=True)
    assert set(timm_state) == set(model.encoder_state_dict())
    timm_state["head.weight"], timm_state["head.bias"] = torch.zeros(10, 32), torch.zeros(10)  # a timm classifier
    torch.save(timm_state, timm_path)
    back = tmp_path / "from_timm.pth"
    assert main([str(timm_path), str(back), "--from", "timm", "--to", "fastmae"]) == 0
    assert "dropped the classifier keys head.bias, head.weight" in capsys.readouterr().out
    fresh = create_model(NAME)
    assert load_official_checkpoint(fresh, back).encoder_only
    with torch.no_grad():
        assert torch.equal(fresh.eval().forward_features(imgs), model.forward_features(imgs))


def test_layout_maps_are_inverse_and_reject_strangers(trained):
    model, _ = trained
    state = model.state_dict()
    hf = to_hf(state)
    assert len(hf) == len(state) + 3 * 2 * 2  # 3 blocks: each qkv weight and bias becomes three tensors
    assert from_hf(hf).keys() == state.keys()
    with pytest.raises(ValueError, match="not a ViTMAE parameter"):
        from_hf({**hf, "vit.pooler.dense.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight: HF state has \['key', 'query'\]"):
        from_hf({k: v for k, v in hf.items() if k != "vit.encoder.layer.0.attention.attention.value.weight"})
    with pytest.raises(ValueError, match="fc_norm"):
        from_timm({"fc_norm.weight": torch.zeros(32), "cls_token": torch.zeros(1, 1, 32)})
    with pytest.raises(ValueError, match="dist_token"):
        from_timm({"dist_token": torch.zeros(1, 1, 32), "cls_token": torch.zeros(1, 1, 32)})


def test_bad_requests_are_one_line_errors(trained, tmp_path, capsys):
    model, _ = trained
    anonymous = tmp_path / "anonymous.pth"
    torch.save({"model": model.state_dict()}, anonymous)
    assert main([str(anonymous), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert main([str(anonymous), str(tmp_path / "hf"), "--to", "hf", "--model", "mae_vit_tiny"]) == 2
    assert "embed_dim 32, model mae_vit_tiny has 96" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path / "x.pth"), "--to", "fastmae"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_against_transformers_when_installed(trained, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not a dependency)")
    model, path = trained
    assert main([str(path), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf_model = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    imgs, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    with torch.no_grad():
        out = hf_model(pixel_values=imgs, noise=noise)
        torch.testing.assert_close(out.loss, model(imgs, 0.75, noise)[0], atol=2e-5, rtol=1e-5)
