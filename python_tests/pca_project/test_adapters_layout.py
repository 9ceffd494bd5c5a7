"""LoRA layouts, adapters on disk (peft and diffusers formats) and on a diffusers UNet, datasets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vision_kernels.weightspace import (
    LoraDataset,
    LoraLayout,
    attach_lora,
    load_vector_into,
    lora_parameters,
    read_adapter,
    remove_lora,
    vector_from_unet,
    write_adapter,
)


def random_vector(layout: LoraLayout, seed: int = 0) -> torch.Tensor:
    return torch.randn(layout.dim, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_layout_order_and_round_trip(tiny_layout: LoraLayout) -> None:
    modules = tiny_layout.modules
    assert modules == sorted(modules) and len(set(modules)) == len(modules)
    assert [e.part for e in tiny_layout.entries] == ["A", "B"] * len(modules)
    assert modules[0].startswith("down_blocks") and any(m.startswith("mid_block") for m in modules)
    assert all(e.shape[0] == 2 for e in tiny_layout.entries if e.part == "A")
    assert tiny_layout.dim == sum(e.numel for e in tiny_layout.entries)
    vector = random_vector(tiny_layout)
    tensors = tiny_layout.unflatten(vector)
    assert torch.equal(tiny_layout.flatten(tensors), vector)
    assert LoraLayout.from_json(tiny_layout.to_json()) == tiny_layout
    first = tiny_layout.entries[0]
    assert tiny_layout.locate(1) == f"{first.module}.lora_A[0, 1]"
    assert tiny_layout.scaling == pytest.approx(4.0 / 2)


def test_layout_of_stable_diffusion_15_is_99648_dimensions() -> None:
    # weights2weights: rank-1 LoRA on to_q/to_v of every attention of SD 1.5's UNet -> 99,648 numbers.
    from vision_kernels.weightspace.layout import LoraEntry

    entries = []
    blocks = [
        ("down_blocks", 0, 320, 2),
        ("down_blocks", 1, 640, 2),
        ("down_blocks", 2, 1280, 2),
        ("up_blocks", 1, 1280, 3),
        ("up_blocks", 2, 640, 3),
        ("up_blocks", 3, 320, 3),
    ]
    names = []
    for kind, block, width, count in blocks:
        for a in range(count):
            names.append((f"{kind}.{block}.attentions.{a}.transformer_blocks.0", width))
    names.append(("mid_block.attentions.0.transformer_blocks.0", 1280))
    for prefix, width in names:
        for attn, source in (("attn1", width), ("attn2", 768)):
            for proj in ("to_q", "to_v"):
                fan_in = width if proj == "to_q" else source
                entries += [
                    LoraEntry(f"{prefix}.{attn}.{proj}", "A", (1, fan_in)),
                    LoraEntry(f"{prefix}.{attn}.{proj}", "B", (width, 1)),
                ]
    layout = LoraLayout(tuple(sorted(entries, key=lambda e: (e.module, e.part))), 1, 27.0)
    assert layout.dim == 99_648


def test_layout_differences_are_described(tiny_layout: LoraLayout) -> None:
    assert tiny_layout.difference(tiny_layout) is None
    other_rank = LoraLayout(tuple(e for e in tiny_layout.entries), 3, tiny_layout.alpha)
    assert "LoRA rank 2 vs 3" in tiny_layout.difference(other_rank)
    other_alpha = LoraLayout(tiny_layout.entries, 2, 8.0)
    assert "lora_alpha 4 vs 8" in tiny_layout.difference(other_alpha)
    fewer = LoraLayout(tiny_layout.entries[:-2], 2, 4.0)
    assert "1 module(s) missing" in tiny_layout.difference(fewer)


@pytest.mark.parametrize("fmt", ["peft", "diffusers"])
def test_adapter_vector_adapter_round_trip_is_exact(tmp_path, tiny_layout, fmt) -> None:
    vector = random_vector(tiny_layout, 3)
    write_adapter(tmp_path / "a", vector, tiny_layout, format=fmt)
    adapter = read_adapter(tmp_path / "a")
    assert adapter.format == fmt and adapter.layout == tiny_layout
    assert torch.equal(adapter.vector(), vector)
    write_adapter(tmp_path / "b", adapter.vector(), adapter.layout, format=fmt)
    assert torch.equal(read_adapter(tmp_path / "b").vector(), vector)


def test_reads_adapters_saved_by_peft_and_diffusers_themselves(tmp_path, unet_factory) -> None:
    make_unet = unet_factory
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=1, lora_alpha=27, target_modules=["to_q", "to_v"], init_lora_weights="gaussian")
    unet = make_unet(seed=1)
    unet.add_adapter(config)
    state = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "diffusers", unet_lora_layers=state, unet_lora_adapter_metadata=config.to_dict()
    )
    from_diffusers = read_adapter(tmp_path / "diffusers")
    peft_model = get_peft_model(
        make_unet(seed=1), LoraConfig(r=1, lora_alpha=27, target_modules=["to_q", "to_v"], init_lora_weights="gaussian")
    )
    peft_model.save_pretrained(tmp_path / "peft")
    from_peft = read_adapter(tmp_path / "peft")
    for adapter in (from_diffusers, from_peft):
        assert adapter.layout.rank == 1 and adapter.layout.alpha == 27.0 and adapter.layout.scaling == 27.0
    expected = {k: v for k, v in state.items()}
    for (module, part), tensor in from_diffusers.tensors.items():
        assert torch.equal(tensor, expected[f"{module}.lora_{part}.weight"])
    assert from_peft.layout.difference(from_diffusers.layout) is None


def _unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 8, 8, generator=generator)
    states = torch.randn(2, 4, 8, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500]), encoder_hidden_states=states).sample


def test_exported_adapters_load_unchanged_in_diffusers_and_peft(tmp_path, tiny_layout, unet_factory) -> None:
    make_unet = unet_factory
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from peft import PeftModel

    vector = random_vector(tiny_layout, 5)
    # Ours: the vector injected functionally and copied into an attached adapter.
    unet = make_unet()
    attach_lora(unet, tiny_layout)
    load_vector_into(unet, vector, tiny_layout)
    assert torch.equal(vector_from_unet(unet, tiny_layout), vector)
    ours = _unet_output(unet)
    generator = torch.Generator().manual_seed(0)
    sample, states = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 4, 8, generator=generator)
    with torch.no_grad():
        functional = torch.func.functional_call(
            unet,
            lora_parameters(vector, tiny_layout),
            (sample, torch.tensor([10, 500])),
            {"encoder_hidden_states": states},
        ).sample
    torch.testing.assert_close(functional, ours, rtol=0, atol=0)
    remove_lora(unet)
    assert not torch.equal(_unet_output(unet), ours)  # the adapter changes the model

    # diffusers: pipe.load_lora_weights on the exported folder.
    write_adapter(tmp_path / "diffusers", vector, tiny_layout, format="diffusers")
    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=None,
        tokenizer=None,
        unet=make_unet(),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(tmp_path / "diffusers", adapter_name="exported")
    assert pipe.unet.peft_config["exported"].lora_alpha == 4
    torch.testing.assert_close(_unet_output(pipe.unet), ours, rtol=0, atol=0)
    # peft: PeftModel.from_pretrained on the exported folder.
    write_adapter(tmp_path / "peft", vector, tiny_layout, format="peft")
    peft_model = PeftModel.from_pretrained(make_unet(), tmp_path / "peft")
    torch.testing.assert_close(_unet_output(peft_model), ours, rtol=0, atol=0)


def test_attach_lora_refuses_a_model_of_another_shape(tiny_layout, unet_factory) -> None:
    make_unet = unet_factory
    with pytest.raises(ValueError, match=r"attach_lora: the model has no module 'down_blocks"):
        attach_lora(
            make_unet(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
            tiny_layout,
        )
    with pytest.raises(ValueError, match=r"has shape \[2, 16\] on this model, the layout expects \[2, 8\]"):
        attach_lora(make_unet(block_out_channels=(16, 32)), tiny_layout)


# ---------------------------------------------------------------- datasets


def test_dataset_from_folder(planted_folder, planted) -> None:
    dataset = LoraDataset.from_folder(planted_folder)
    assert dataset.shape == tuple(planted.weights.shape)
    assert dataset.names[:3] == ["model0", "model1", "model2"] and dataset.names[10] == "model10"  # natural order
    assert dataset.layout == planted.layout
    assert torch.equal(dataset.read(9, 12), planted.weights[9:12])
    assert torch.equal(dataset.vector(0), planted.weights[0])


@pytest.fixture
def small_folder(tmp_path, tiny_layout):
    for i in range(3):
        write_adapter(tmp_path / f"m{i}", random_vector(tiny_layout, i), tiny_layout)
    return tmp_path


def test_dataset_refuses_a_different_rank(small_folder, tiny_layout, layout_factory) -> None:
    rank4 = layout_factory(rank=4, alpha=4.0)
    write_adapter(small_folder / "m9", random_vector(rank4), rank4)
    with pytest.raises(ValueError, match=r"adapter 'm9' .* does not share the layout of 'm0' .*: LoRA rank 2 vs 4"):
        LoraDataset.from_folder(small_folder)


def test_dataset_refuses_different_modules_and_alpha(small_folder, tiny_layout, layout_factory) -> None:
    q_only = layout_factory(target_modules=("to_q",))
    write_adapter(small_folder / "m7", random_vector(q_only), q_only)
    with pytest.raises(ValueError, match=r"adapter 'm7' .*different target modules: 8 module\(s\) missing"):
        LoraDataset.from_folder(small_folder)
    shutil.rmtree(small_folder / "m7")
    other_alpha = LoraLayout(tiny_layout.entries, 2, 16.0)
    write_adapter(small_folder / "m8", random_vector(tiny_layout), other_alpha)
    with pytest.raises(ValueError, match=r"lora_alpha 4 vs 16"):
        LoraDataset.from_folder(small_folder)


def test_nan_weights_are_refused(small_folder, tiny_layout) -> None:
    from safetensors.torch import load_file, save_file

    path = small_folder / "m1" / "adapter_model.safetensors"
    state = load_file(path)
    key = sorted(state)[5]
    state[key][0, 0] = float("nan")
    save_file(state, path)
    with pytest.raises(ValueError, match=rf"'{key}' holds NaN or Inf weights"):
        LoraDataset.from_folder(small_folder)
    with pytest.raises(ValueError, match=r"argument 'vector' holds NaN or Inf"):
        write_adapter(small_folder / "bad", torch.full((tiny_layout.dim,), float("nan")), tiny_layout)


def test_unsupported_adapters_are_refused(tmp_path, tiny_layout) -> None:
    from safetensors.torch import save_file

    (tmp_path / "kohya").mkdir()
    save_file(
        {
            "lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(1, 8),
            "lora_unet_down_blocks_0_attn1_to_q.alpha": torch.tensor(1.0),
        },
        tmp_path / "kohya" / "pytorch_lora_weights.safetensors",
    )
    with pytest.raises(ValueError, match=r"unsupported key 'lora_unet_down_blocks_0_attn1_to_q"):
        read_adapter(tmp_path / "kohya")
    (tmp_path / "te").mkdir()
    save_file(
        {"text_encoder.layer.lora_A.weight": torch.zeros(1, 4)}, tmp_path / "te" / "pytorch_lora_weights.safetensors"
    )
    with pytest.raises(ValueError, match=r"text-encoder LoRA weights"):
        read_adapter(tmp_path / "te")
    write_adapter(tmp_path / "dora", random_vector(tiny_layout), tiny_layout)
    config = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    config["use_dora"] = True
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"uses DoRA"):
        read_adapter(tmp_path / "dora")
    with pytest.raises(FileNotFoundError, match=r"holds no LoRA adapter"):
        read_adapter(tmp_path)
    (tmp_path / "half").mkdir()
    save_file({"unet.a.lora_A.weight": torch.zeros(1, 4)}, tmp_path / "half" / "pytorch_lora_weights.safetensors")
    with pytest.raises(ValueError, match=r"lora_B missing for module 'a'"):
        read_adapter(tmp_path / "half")
    (tmp_path / "mixed").mkdir()
    save_file(
        {
            "unet.a.lora_A.weight": torch.zeros(1, 4),
            "unet.a.lora_B.weight": torch.zeros(3, 1),
            "unet.b.lora_A.weight": torch.zeros(2, 4),
            "unet.b.lora_B.weight": torch.zeros(3, 2),
        },
        tmp_path / "mixed" / "pytorch_lora_weights.safetensors",
    )
    with pytest.raises(ValueError, match=r"mixes LoRA ranks \[1, 2\]"):
        read_adapter(tmp_path / "mixed")


def test_write_adapter_bad_format(tmp_path, tiny_layout) -> None:
    with pytest.raises(ValueError, match=r"argument 'format' must be one of"):
        write_adapter(tmp_path, random_vector(tiny_layout), tiny_layout, format="kohya")
    with pytest.raises(ValueError, match=r"must have shape \[\d+\], got \[3\]"):
        write_adapter(tmp_path, torch.zeros(3), tiny_layout)
