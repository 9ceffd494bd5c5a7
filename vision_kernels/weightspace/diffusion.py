"""weights2weights on a diffusers UNet: fine-tuning adapters, inversion, generation with delayed injection.

The real setting is Stable Diffusion 1.5 (``stable-diffusion-v1-5/stable-diffusion-v1-5``, the
paper's base; its release used the Realistic Vision fine-tune ``stablediffusionapi/realistic-vision-v51``)
with rank-1 LoRAs on ``to_q``/``to_v`` (alpha 27), prompt ``"sks person"``::

    pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    space = WeightSpace.load("w2w_space.safetensors")
    prompt_embeds, _ = pipe.encode_prompt("sks person", "cpu", 1, False)
    latents = encode_images(pipe.vae, images)                      # one image, [1, 3, 512, 512] in [-1, 1]
    result = invert(space, pipe.unet, pipe.scheduler, latents, prompt_embeds, n_components=10000)
    space.export_adapter("inverted", result.coefficients, format="diffusers")

Everything here works the same on any UNet2DConditionModel; the tests use tiny random ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .._optional import require
from .._progress import progress
from ..ops._checks import ArgCheck
from .adapters import attach_lora, load_vector_into, lora_parameters, peft_adapters
from .layout import LoraLayout
from .space import WeightSpace

__all__ = [
    "Latents",
    "encode_images",
    "denoising_loss",
    "finetune_lora",
    "invert",
    "InversionResult",
    "evaluate_denoising_loss",
    "DelayedInjection",
    "generate_latents",
    "tiny_unet",
]


def tiny_unet(**overrides: Any) -> torch.nn.Module:
    """A diffusers ``UNet2DConditionModel`` from a tiny config (8x8 samples, 3 channels, widths 8 and
    16, one cross-attention block each way on 8-d prompts), with random weights drawn from torch's
    global generator: the model of the demo and the tests, where no pretrained UNet can be loaded.
    ``overrides`` replace any config entry (e.g. ``sample_size``)."""
    UNet2DConditionModel = require("diffusers", feature="vision_kernels.weightspace.tiny_unet").UNet2DConditionModel

    config: dict[str, Any] = dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # diffusers' top-level lazy __init__ types its classes as the torch-less dummy objects
    return cast(torch.nn.Module, UNet2DConditionModel(**{**config, **overrides}))


@dataclass
class Latents:
    """Latents of training images: the VAE posterior mean and std (std None: fixed latents)."""

    mean: Tensor  # [B, C, h, w], already multiplied by the VAE scaling factor
    std: Tensor | None = None

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        if self.std is None:
            return self.mean
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * noise


@torch.no_grad()
def encode_images(vae: Any, images: Tensor) -> Latents:
    """Encode ``[B, 3, H, W]`` images in [-1, 1] with a diffusers ``AutoencoderKL``; a fresh latent is
    drawn from the posterior at every training/inversion step (as weights2weights does)."""
    posterior = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    factor = float(vae.config.scaling_factor)
    return Latents(posterior.mean * factor, posterior.std * factor)


def _as_latents(latents: Tensor | Latents) -> Latents:
    return latents if isinstance(latents, Latents) else Latents(latents)


def _target(scheduler: Any, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"vision_kernels.weightspace: unsupported scheduler prediction_type {kind!r}")


def _mask(mask: Tensor | None, latents: Tensor) -> Tensor | None:
    """A [H, W] / [1, 1, H, W] mask in [0, 1] at any resolution, resized to the latents (bilinear)."""
    if mask is None:
        return None
    m = mask.to(latents.device, torch.float32)
    while m.dim() < 4:
        m = m.unsqueeze(0)
    if m.shape[-2:] != latents.shape[-2:]:
        m = F.interpolate(m, size=latents.shape[-2:], mode="bilinear", align_corners=False)
    return m


def denoising_loss(
    unet: torch.nn.Module,
    scheduler: Any,
    latents: Tensor,
    encoder_hidden_states: Tensor,
    noise: Tensor,
    timesteps: Tensor,
    *,
    mask: Tensor | None = None,
    parameters: dict[str, Tensor] | None = None,
) -> Tensor:
    """The standard diffusion loss ``mean((m * (eps_theta(x_t, t, y) - eps))^2)``.

    ``x_t = scheduler.add_noise(x_0, eps, t)``; the target is ``eps`` for epsilon-prediction
    schedulers (``v`` or ``x_0`` for the other prediction types). ``parameters`` replaces
    parameters of ``unet`` for this call (``torch.func.functional_call``), keeping their graph.
    """
    noisy = scheduler.add_noise(latents, noise, timesteps)
    states = encoder_hidden_states.expand(latents.shape[0], *encoder_hidden_states.shape[1:])
    if parameters is None:
        prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample
    else:
        prediction = torch.func.functional_call(
            unet, parameters, (noisy, timesteps), {"encoder_hidden_states": states}
        ).sample
    target = _target(scheduler, latents, noise, timesteps)
    m = _mask(mask, latents)
    if m is not None:
        prediction, target = prediction * m, target * m
    return F.mse_loss(prediction.float(), target.float())


@contextmanager
def _frozen(unet: torch.nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    unet.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _repeat(latents: Tensor, batch_size: int) -> Tensor:
    return latents.repeat_interleave(batch_size, dim=0) if batch_size > 1 else latents


def _draws(scheduler: Any, shape: torch.Size, generator: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
    noise = torch.randn(shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
    return noise, timesteps


def _training_batch(
    source: Latents, scheduler: Any, generator: torch.Generator, batch_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x0, noise, timesteps)``: the latents (a fresh posterior draw) repeated ``batch_size`` times,
    each copy with its own noise and timestep."""
    x0 = _repeat(source.sample(generator), batch_size)
    noise, timesteps = _draws(scheduler, x0.shape, generator, x0.shape[0])
    return x0, noise.to(x0), timesteps.to(x0.device)


def finetune_lora(
    unet: torch.nn.Module,
    scheduler: Any,
    latents: Tensor | Latents,
    encoder_hidden_states: Tensor,
    *,
    rank: int = 1,
    alpha: float = 27.0,
    target_modules: tuple[str, ...] = ("to_q", "to_v"),
    steps: int = 400,
    lr: float = 1e-3,
    batch_size: int = 1,
    seed: int = 0,
    init_seed: int = 0,
    base_model: str | None = None,
    adapter_name: str = "finetune",
    show_progress: bool | None = None,
) -> tuple[Tensor, LoraLayout]:
    """Fine-tune a fresh LoRA on a few images (DreamBooth-style, the way the weights2weights dataset was made).

    Only the LoRA weights train, with :func:`denoising_loss` at random timesteps; the adapter is
    removed from ``unet`` afterwards. Defaults follow weights2weights: rank 1 on ``to_q``/``to_v``,
    alpha 27. Each step averages ``batch_size`` (noise, timestep) draws per image. ``init_seed``
    fixes the LoRA initialization (the same for every model of a dataset, so models differ by what
    they were trained on), ``seed`` the noise and timesteps.

    Returns:
        ``(vector, layout)``: the trained adapter as a ``[D]`` vector and its layout (write it with
        :func:`write_adapter`).
    """
    LoraConfig = require("peft", feature="vision_kernels.weightspace.finetune_lora").LoraConfig

    source = _as_latents(latents)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha scales as alpha / r
        target_modules=list(target_modules),
        init_lora_weights=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        peft_adapters(unet).add_adapter(config, adapter_name=adapter_name)
    try:
        trainable = {n: p for n, p in unet.named_parameters() if f".{adapter_name}." in n and ".lora_" in n}
        with _frozen(unet):
            for parameter in trainable.values():
                parameter.requires_grad_(True)
            optimizer = torch.optim.Adam(trainable.values(), lr=lr)
            generator = torch.Generator().manual_seed(seed)
            for _ in progress(range(steps), desc="fine-tuning LoRA", enabled=show_progress):
                x0, noise, timesteps = _training_batch(source, scheduler, generator, batch_size)
                loss = denoising_loss(unet, scheduler, x0, encoder_hidden_states, noise, timesteps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        tensors = {}
        for name, parameter in trainable.items():
            module, rest = name.split(".lora_", 1)
            tensors[(module, rest[0])] = parameter.detach().cpu().clone()
        layout = LoraLayout.from_tensors(tensors, rank=rank, alpha=alpha, base_model=base_model)
        return layout.flatten(tensors), layout
    finally:
        peft_adapters(unet).delete_adapters(adapter_name)


def _ensure_adapter(unet: torch.nn.Module, layout: LoraLayout, adapter_name: str) -> None:
    if adapter_name not in (getattr(unet, "peft_config", None) or {}):
        attach_lora(unet, layout, adapter_name=adapter_name)
    peft_adapters(unet).set_adapter(adapter_name)


def _space_layout(space: WeightSpace, function: str) -> LoraLayout:
    if space.layout is None:
        raise ValueError(f"{function}: the space has no LoRA layout, so its models cannot be put on a UNet")
    return space.layout


@dataclass
class InversionResult:
    """Coordinates found by :func:`invert` and the loss at every step."""

    coefficients: Tensor  # [k] float32
    losses: list[float] = field(default_factory=list)


def invert(
    space: WeightSpace,
    unet: torch.nn.Module,
    scheduler: Any,
    latents: Tensor | Latents,
    encoder_hidden_states: Tensor,
    *,
    n_components: int | None = None,
    steps: int = 400,
    lr: float = 0.1,
    weight_decay: float = 1e-10,
    batch_size: int = 1,
    mask: Tensor | None = None,
    init: Tensor | None = None,
    seed: int = 0,
    adapter_name: str = "w2w",
    callback: Callable[[int, Tensor], None] | None = None,
    show_progress: bool | None = None,
) -> InversionResult:
    """Invert one image into the weight space (weights2weights, section "Inversion").

    ``c* = argmin_c E_{t, eps} || m * (eps_theta(w(c))(x_t, t, y) - eps) ||^2`` over the first k
    coordinates, where the UNet carries the LoRA ``w(c) = reconstruct(c)`` (a fused
    ``pca_reconstruct`` whose gradient ``(dL/dw * std) @ V`` flows back to ``c``), ``y`` is the
    conditioning (e.g. "sks person"), ``m`` an optional mask (``[H, W]`` in [0, 1] at image or latent
    resolution) and ``batch_size`` pairs ``t``, ``eps`` are drawn afresh at every step (weights2weights:
    one, 400 steps, lr 0.1, on 10,000 components). Adam from ``init`` (default: the mean model, ``c = 0``).

    The UNet's own weights stay frozen; afterwards it carries the inverted model as adapter
    ``adapter_name`` (attached if needed), ready for generation. ``callback(step, coefficients)``
    is called after every step (e.g. to monitor the loss on fixed draws).
    """
    function = "vision_kernels.weightspace.invert"
    layout = _space_layout(space, function)
    check = ArgCheck(function)
    count = space.n_components if n_components is None else n_components
    check.in_range(count, "n_components", 1, space.n_components + 1)
    source = _as_latents(latents)
    _ensure_adapter(unet, layout, adapter_name)
    start = torch.zeros(count) if init is None else init.detach().float().reshape(-1)[:count].clone()
    coefficients = start.to(space.basis.device).requires_grad_(True)
    optimizer = torch.optim.Adam([coefficients], lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    with _frozen(unet):
        for step in progress(range(steps), desc="inverting", enabled=show_progress):
            x0, noise, timesteps = _training_batch(source, scheduler, generator, batch_size)
            weights = space.reconstruct(coefficients)  # [D], differentiable in c
            parameters = lora_parameters(weights.to(x0.device), layout, adapter_name)
            loss = denoising_loss(
                unet, scheduler, x0, encoder_hidden_states, noise, timesteps, mask=mask, parameters=parameters
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, coefficients.detach())
    result = coefficients.detach().float()
    load_vector_into(unet, space.reconstruct(result).to(next(unet.parameters()).device), layout, adapter_name)
    return InversionResult(result.cpu(), losses)


@torch.no_grad()
def evaluate_denoising_loss(
    space: WeightSpace,
    unet: torch.nn.Module,
    scheduler: Any,
    latents: Tensor | Latents,
    encoder_hidden_states: Tensor,
    coefficients: Tensor,
    *,
    draws: int = 32,
    seed: int = 1234,
    mask: Tensor | None = None,
    adapter_name: str = "w2w",
) -> float:
    """Mean :func:`denoising_loss` of the model at ``coefficients`` over a fixed set of ``draws``
    (noise, timestep) pairs: a deterministic score to compare models on one image."""
    layout = _space_layout(space, "vision_kernels.weightspace.evaluate_denoising_loss")
    _ensure_adapter(unet, layout, adapter_name)
    source = _as_latents(latents)
    parameters = lora_parameters(space.reconstruct(coefficients.float()), layout, adapter_name)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(draws):
        x0, noise, timesteps = _training_batch(source, scheduler, generator, 1)
        loss = denoising_loss(
            unet, scheduler, x0, encoder_hidden_states, noise, timesteps, mask=mask, parameters=parameters
        )
        total += float(loss)
    return total / draws


class DelayedInjection:
    """Delayed injection of an edit (weights2weights, section "Editing"): the UNet denoises with the
    original model while ``t > edit_from_timestep`` and with the edited one from
    ``t <= edit_from_timestep`` on, so the coarse structure (set early, at high noise) comes from the
    original identity and the edit changes the attributes on top of it.

    A context manager that hooks the UNet's forward (it reads the ``timestep`` argument), so it
    works inside any sampling loop, including diffusers pipelines::

        with DelayedInjection(pipe.unet, space.layout, space.reconstruct(c), space.reconstruct(c_edit), 800):
            image = pipe(prompt_embeds=..., negative_prompt_embeds=...).images[0]

    On exit the original weights are back in the adapter.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        layout: LoraLayout,
        original: Tensor,
        edited: Tensor,
        edit_from_timestep: float,
        *,
        adapter_name: str = "w2w",
    ) -> None:
        self.unet, self.layout, self.adapter_name = unet, layout, adapter_name
        self.original, self.edited = original.detach(), edited.detach()
        self.edit_from_timestep = float(edit_from_timestep)
        self.edited_calls = 0
        self.original_calls = 0
        self._current: Tensor | None = None
        self._handle: Any = None

    def _load(self, vector: Tensor) -> None:
        if self._current is not vector:
            load_vector_into(self.unet, vector, self.layout, self.adapter_name)
            self._current = vector

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        value = float(torch.as_tensor(timestep).reshape(-1)[0])
        if value <= self.edit_from_timestep:
            self.edited_calls += 1
            self._load(self.edited)
        else:
            self.original_calls += 1
            self._load(self.original)

    def __enter__(self) -> DelayedInjection:
        _ensure_adapter(self.unet, self.layout, self.adapter_name)
        self._handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        self._current = None
        self._load(self.original)


@torch.no_grad()
def generate_latents(
    space: WeightSpace,
    unet: torch.nn.Module,
    scheduler: Any,
    encoder_hidden_states: Tensor,
    coefficients: Tensor,
    *,
    edited_coefficients: Tensor | None = None,
    edit_from_timestep: float | None = None,
    steps: int = 50,
    guidance_scale: float = 1.0,
    negative_encoder_hidden_states: Tensor | None = None,
    latents: Tensor | None = None,
    generator: torch.Generator | None = None,
    adapter_name: str = "w2w",
) -> Tensor:
    """Sample latents from the model at ``coefficients`` (scheduler loop with optional classifier-free
    guidance). With ``edited_coefficients``, the edit is applied by :class:`DelayedInjection` from
    ``edit_from_timestep`` on (None: from the first step). Decode with ``vae.decode(latents / factor)``.
    """
    layout = _space_layout(space, "vision_kernels.weightspace.generate_latents")
    _ensure_adapter(unet, layout, adapter_name)
    config: Any = unet.config  # the diffusers model's FrozenDict config
    if latents is None:
        shape = (1, config.in_channels, config.sample_size, config.sample_size)
        latents = torch.randn(shape, generator=generator).to(encoder_hidden_states.device)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    original = space.reconstruct(coefficients.float())
    edited = original if edited_coefficients is None else space.reconstruct(edited_coefficients.float())
    threshold = float("inf") if edit_from_timestep is None else edit_from_timestep
    guided = guidance_scale != 1.0
    if guided:
        negative = negative_encoder_hidden_states
        if negative is None:
            negative = torch.zeros_like(encoder_hidden_states)
        states = torch.cat([negative, encoder_hidden_states])
    else:
        states = encoder_hidden_states
    with DelayedInjection(unet, layout, original, edited, threshold, adapter_name=adapter_name):
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            prediction = unet(model_input, t, encoder_hidden_states=states).sample
            if guided:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(prediction, t, latents).prev_sample
    return latents
