"""titan_mimo.hf against transformers (the oracle): tiny random Nemotron-H, RADIO and Nemotron-H
Omni folders built by transformers on CPU, every weight randomised (router weights and
correction biases included) so that a wrong mapping cannot hide behind ones and zeros."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from titan_mimo import hf  # noqa: E402
from titan_mimo.hf.files import Folder  # noqa: E402

from hf_helpers import (  # noqa: E402
    IMAGE_ID,
    PATCH,
    make_nemotron_h,
    make_omni,
    make_radio,
    omni_inputs,
    rel,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "dense": make_nemotron_h(root / "dense", "M-*-M-"),
        "moe": make_nemotron_h(root / "moe", "ME*E", n_group=2, topk_group=1),
        "latent": make_nemotron_h(root / "latent", "E-M*E", moe_latent_size=12),
        "radio": make_radio(root / "radio"),
        "omni": make_omni(root / "omni", "M*E-"),
        "omni_mtp": make_omni(root / "omni_mtp", "M-*", num_nextn_predict_layers=1),
    }


def _lm_logits(path, ids):
    ref = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return ref(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("name", ["dense", "moe", "latent"])
def test_nemotron_h_matches_transformers(folders, name):
    ids = torch.randint(0, 96, (2, 13), generator=torch.Generator().manual_seed(1))
    ours = hf.from_pretrained(folders[name])
    with torch.no_grad():
        err = rel(ours(input_ids=ids), _lm_logits(folders[name], ids))
    print(f"nemotron_h {name}: max rel err {err:.2e}")
    assert err <= TOL


def test_radio_matches_transformers_on_packed_images_of_different_grids(folders):
    ref = transformers.AutoModel.from_pretrained(folders["radio"]).eval()
    ours = hf.from_pretrained(folders["radio"])
    g = torch.Generator().manual_seed(2)
    grids = torch.tensor([[4, 6], [6, 2], [8, 8], [3, 5]])  # 8 = the table's side: no resampling
    pixels = torch.rand(int(grids.prod(-1).sum()), 3 * PATCH * PATCH, generator=g)
    dense = torch.rand(2, 3, 5 * PATCH, 7 * PATCH, generator=g)
    with torch.no_grad():
        packed_err = rel(ours(pixel_values=pixels, image_grid_hw=grids),
                         ref(pixel_values=pixels, image_grid_hw=grids).features)
        dense_err = rel(ours(pixel_values=dense), ref(pixel_values=dense).features)
    print(f"radio: packed {packed_err:.2e}, dense {dense_err:.2e}")
    assert packed_err <= TOL and dense_err <= TOL


@pytest.mark.parametrize("name", ["omni", "omni_mtp"])
def test_omni_matches_transformers_on_two_images_of_different_sizes_and_text(folders, name):
    ref = _omni(folders[name])
    ours = hf.from_pretrained(folders[name])
    inputs = omni_inputs()
    with torch.no_grad():
        err = rel(ours(**inputs), ref(**inputs, use_cache=False).logits)
    print(f"{name}: max rel err {err:.2e}")
    assert ours.layout.vit.final_norm == (name == "omni_mtp")
    assert err <= TOL


def _omni(path):
    from transformers.models.nemotron_h_omni import NemotronH_Omni_Reasoning_V3
    return NemotronH_Omni_Reasoning_V3.from_pretrained(path, dtype=torch.float32).eval()


def _file_tensors(path):
    folder = Folder(path)
    return {name: folder.read(name) for name in folder.names}


@pytest.mark.parametrize("name", ["moe", "radio", "omni"])
def test_save_pretrained_round_trip(folders, name, tmp_path):
    """Our export is the source folder again, tensor for tensor (sharded here), transformers loads
    it, and our from_pretrained of it gives back identical tensors."""
    ours = hf.from_pretrained(folders[name])
    files = hf.save_pretrained(ours, tmp_path / "out", max_shard_bytes=20_000)
    assert (tmp_path / "out" / "model.safetensors.index.json") in files
    source, written = _file_tensors(folders[name]), _file_tensors(tmp_path / "out")
    assert sorted(written) == sorted(source)
    for key, t in source.items():
        assert torch.equal(written[key], t), key
    again = hf.from_pretrained(tmp_path / "out")
    for (k, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    if name == "moe":
        ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(3))
        assert torch.equal(_lm_logits(tmp_path / "out", ids), _lm_logits(folders[name], ids))


def test_bfloat16_export_loads_in_transformers(folders, tmp_path):
    ours = hf.from_pretrained(folders["omni"])
    hf.save_pretrained(ours, tmp_path / "bf16", dtype="bfloat16")
    folder = Folder(tmp_path / "bf16")
    assert folder.dtype("language_model.backbone.embeddings.weight") == torch.bfloat16
    assert folder.dtype("language_model.backbone.layers.2.mixer.gate.weight") == torch.float32
    ref = _omni(tmp_path / "bf16")
    inputs = omni_inputs()
    with torch.no_grad():
        bf16 = hf.from_pretrained(tmp_path / "bf16")
        assert rel(bf16(**inputs), ref(**inputs, use_cache=False).logits) <= TOL


def _edit_config(src, dst, **changes):
    import shutil
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_clear_errors(folders, tmp_path):
    with pytest.raises(ValueError, match="config.json does not exist"):
        hf.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'llama' is not supported; supported: \['nemotron_h'"):
        hf.from_pretrained(_edit_config(folders["dense"], tmp_path / "llama", model_type="llama"))
    with pytest.raises(ValueError, match="use_conv_bias = False cannot be expressed"):
        hf.from_pretrained(_edit_config(folders["dense"], tmp_path / "nobias", use_conv_bias=False))
    with pytest.raises(ValueError, match="qkv_bias = False cannot be expressed"):
        hf.from_pretrained(_edit_config(folders["radio"], tmp_path / "noqkv", qkv_bias=False))
    wide = _edit_config(folders["dense"], tmp_path / "wide", intermediate_size=40)
    with pytest.raises(ValueError, match=r"'backbone.layers.1.mixer.up_proj.weight' has shape \(48, 32\), "
                                         r"'layers.1.mlp.w1.weight' needs \(40, 32\)"):
        hf.from_pretrained(wide)
    from safetensors.torch import save_file
    tensors = _file_tensors(folders["dense"])
    for label, edit, message in (
            ("missing", lambda t: t.pop("backbone.norm_f.weight"), "tensor 'backbone.norm_f.weight' is missing"),
            ("extra", lambda t: t.update(extra=torch.zeros(2)), "tensor 'extra' .* has no place")):
        folder = _edit_config(folders["dense"], tmp_path / label)
        edited = dict(tensors)
        edit(edited)
        save_file(edited, str(folder / "model.safetensors"))
        with pytest.raises(ValueError, match=message):
            hf.from_pretrained(folder)


def test_omni_config_fields(folders):
    layout = hf.describe(folders["omni"])
    assert layout.image_token_id == IMAGE_ID
    assert layout.vit.pixel_shuffle == 2 and layout.vit.projector_norm == "rmsnorm"
    assert layout.lm.position_embedding == "none" and layout.lm.layer_pattern == "M*E-"


def _train(out, omni, *overrides):
    from launcher import torchrun
    torchrun(4, "-m", "titan_mimo.train", "--config", "train_configs/debug_cpu.toml", f"--job.dump_folder={out}",
             f"--modules.vision.model=hf:{omni}", f"--modules.language.model=hf:{omni}",
             "--modules.vision.placeholder_id=-1", "--checkpoint.enable=true", "--metrics.log_freq=1",
             *overrides, timeout=600)
    steps = sorted((out / "checkpoint").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return steps[-1]


def test_train_hf_omni_non_colocated_then_export(folders, tmp_path):
    """torchrun trains the Omni folder 3 steps with vision on 2 ranks (FSDP) and language on 2
    (FSDP); the export loads in transformers and its logits equal ours of the same folder."""
    from titan_mimo.export import main as export_main
    step = _train(tmp_path / "run", folders["omni"], "--training.steps=3")
    export_main([str(step), str(tmp_path / "export"), "--format", "hf"])
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    trained, source = _file_tensors(tmp_path / "export"), _file_tensors(folders["omni"])
    assert sorted(trained) == sorted(source)
    assert not torch.equal(trained["mlp1.1.weight"], source["mlp1.1.weight"])  # it trained
    key = "vision_model.radio_model.model.patch_generator.video_embedder.weight"
    assert torch.equal(trained[key], source[key])  # carried untouched
    inputs = omni_inputs()
    with torch.no_grad():
        err = rel(hf.from_pretrained(tmp_path / "export")(**inputs), _omni(tmp_path / "export")(**inputs,
                                                                                               use_cache=False).logits)
    print(f"trained omni export: max rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("language", ["tp", "pp", "ep"])
def test_hf_weights_load_into_sharded_modules_exactly(folders, tmp_path, language):
    """One step that changes no weight (lr 1e-30 is below every weight's rounding, no
    correction-bias update), vision FSDP over 2 ranks, language TP, PP or EP over 2: the export is
    the source folder bit for bit, so every rank loaded its shards right."""
    step = _train(tmp_path / "run", folders["omni"], "--training.steps=1", "--optimizer.lr=1e-30",
                  f"--modules.language.{language}=2", "--modules.language.model_args.moe_bias_update_rate=0")
    from titan_mimo.export import export_hf
    export_hf(step, tmp_path / "export")
    exported, source = _file_tensors(tmp_path / "export"), _file_tensors(folders["omni"])
    assert sorted(exported) == sorted(source)
    for key, t in source.items():
        assert torch.equal(exported[key], t), key


def test_trainer_module_args_from_folders(folders):
    from titan_mimo.config import Module
    from titan_mimo.hf import training
    lm = training.module_args(folders["omni"], is_encoder=False,
                              overrides={"moe_backend": "torch", "mamba_kernels": "triton"})
    assert lm.layer_pattern == "M*E-" and lm.dim == 32 and lm.mamba_kernels == "triton"
    vit = training.module_args(folders["omni"], is_encoder=True, overrides={"out_dim": 32})
    assert vit.projector_act == "relu2" and vit.n_register_tokens == 5
    with pytest.raises(ValueError, match=r"\['dim'\] is set by .*config.json; only .* may be overridden"):
        training.module_args(folders["omni"], is_encoder=False, overrides={"dim": 64})
    with pytest.raises(ValueError, match="a radio folder cannot be the language module"):
        training.module_args(folders["radio"], is_encoder=False, overrides={})
    radio = training.module_args(folders["radio"], is_encoder=True, overrides={"out_dim": 48, "projector_hidden": 8})
    assert radio.norm_mean is not None and radio.out_dim == 48  # a radio folder's projector is ours
    assert Module(model=f"hf:{folders['omni']}", feeds="language").placeholder_id == IMAGE_ID
    with pytest.raises(ValueError, match=f"placeholder_id = 3, but .* has image_token_id = {IMAGE_ID}"):
        Module(model=f"hf:{folders['omni']}", feeds="language", placeholder_id=3)


def test_config_only_folder_builds_the_shape(folders, tmp_path):
    """config.json alone (a released model's shape, for benchmarks): args build, nothing loads."""
    from titan_mimo.hf import training
    (tmp_path / "shape").mkdir()
    (tmp_path / "shape" / "config.json").write_text((folders["omni"] / "config.json").read_text())
    lm = training.module_args(tmp_path / "shape", is_encoder=False, overrides={})
    assert lm == hf.describe(folders["omni"]).lm
    # LayerScale of identity value (transformers writes its tensors, C-RADIO ships none) is left out.
    vit = dataclasses.replace(hf.describe(folders["omni"]).vit, layer_scale=False)
    assert training.module_args(tmp_path / "shape", True, {}) == vit
    assert training.load_weights([], tmp_path / "shape", is_encoder=False) is None
    with pytest.raises(ValueError, match="has neither model.safetensors nor model.safetensors.index.json"):
        hf.from_pretrained(tmp_path / "shape")
