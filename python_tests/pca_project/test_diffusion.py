"""End to end on a tiny diffusers UNet: adapters really fine-tuned on synthetic identity images,
their weight space, inversion (optionally masked), delayed injection in generation loops."""

from __future__ import annotations

import copy

import pytest
import torch

from vision_kernels.weightspace import (
    DelayedInjection,
    Latents,
    encode_images,
    evaluate_denoising_loss,
    generate_latents,
    invert,
    lora_parameters,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_unet(identities) -> torch.nn.Module:
    """A copy of the pre-trained base UNet, without any adapter the session may have attached."""
    unet = copy.deepcopy(identities.unet)
    for name in list(getattr(unet, "peft_config", {}) or {}):
        unet.delete_adapters(name)
    return unet


def tiny_pipeline(unet: torch.nn.Module):
    """A StableDiffusionPipeline around a tiny UNet (no VAE, no text encoder: prompt embeddings and
    latents are passed directly)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False)
    return StableDiffusionPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def test_each_fine_tuned_model_fits_its_own_image_best(identities) -> None:
    space, unet = identities.space, fresh_unet(identities)
    count = len(identities.images)
    losses = torch.tensor(
        [
            [
                evaluate_denoising_loss(
                    space, unet, identities.scheduler, image, identities.prompt, space.coefficients[i], draws=16
                )
                for image in identities.images
            ]
            for i in range(count)
        ]
    )  # [model, image]
    assert torch.equal(losses.argmin(0), torch.arange(count)), losses
    assert space.layout.rank == 1 and space.layout.alpha == 27.0 and space.layout.base_model == "tiny-unet"
    assert space.names == [f"id{i}" for i in range(count)]


@pytest.mark.parametrize("target", [0, 2])
def test_inversion_lowers_the_loss_and_moves_towards_the_target(identities, target) -> None:
    space, unet = identities.space, fresh_unet(identities)
    image, prompt, scheduler = identities.images[target], identities.prompt, identities.scheduler
    start = torch.zeros(space.n_components)  # the mean model
    result = invert(space, unet, scheduler, image, prompt, steps=100, lr=0.3, batch_size=8, seed=target)
    before = evaluate_denoising_loss(space, unet, scheduler, image, prompt, start)
    after = evaluate_denoising_loss(space, unet, scheduler, image, prompt, result.coefficients)
    assert after < before - 0.003, (before, after)
    goal = space.coefficients[target]
    assert float((result.coefficients - goal).norm()) < 0.5 * float((start - goal).norm())
    assert len(result.losses) == 100
    # The UNet now carries the inverted model: same output as injecting it functionally.
    sample, t = torch.randn(1, 3, 8, 8), torch.tensor([300])
    with torch.no_grad():
        carried = unet(sample, t, encoder_hidden_states=prompt).sample
        injected = torch.func.functional_call(
            unet,
            lora_parameters(space.reconstruct(result.coefficients), space.layout),
            (sample, t),
            {"encoder_hidden_states": prompt},
        ).sample
    torch.testing.assert_close(carried, injected, rtol=0, atol=0)


def test_inverted_model_exported_as_adapter_loads_in_a_pipeline(tmp_path, identities) -> None:
    space, unet = identities.space, fresh_unet(identities)
    result = invert(space, unet, identities.scheduler, identities.images[1], identities.prompt, steps=5, lr=0.3)
    folder = space.export_adapter(tmp_path / "inverted", result.coefficients, format="diffusers")
    pipe = tiny_pipeline(fresh_unet(identities))
    pipe.load_lora_weights(folder)
    sample, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 700])
    prompt = identities.prompt.expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(
            pipe.unet(sample, t, encoder_hidden_states=prompt).sample,
            unet(sample, t, encoder_hidden_states=prompt).sample,
            rtol=0,
            atol=0,
        )


def test_masked_inversion(identities) -> None:
    space, unet = identities.space, fresh_unet(identities)
    image, prompt, scheduler = identities.images[3], identities.prompt, identities.scheduler
    # A mask of zeros hides the whole image: nothing to fit, the coefficients do not move.
    hidden = invert(space, unet, scheduler, image, prompt, steps=10, lr=0.3, mask=torch.zeros(16, 16))
    assert hidden.losses == [0.0] * 10 and torch.equal(hidden.coefficients, torch.zeros(space.n_components))
    # Half the image (mask given at twice the latent resolution, resized like weights2weights does).
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1
    start = torch.zeros(space.n_components)
    result = invert(space, unet, scheduler, image, prompt, steps=60, lr=0.3, batch_size=8, mask=mask)
    before = evaluate_denoising_loss(space, unet, scheduler, image, prompt, start, mask=mask)
    after = evaluate_denoising_loss(space, unet, scheduler, image, prompt, result.coefficients, mask=mask)
    assert after < before, (before, after)


def test_delayed_injection_in_a_sampling_loop(identities) -> None:
    from diffusers import DDIMScheduler

    space, unet = identities.space, fresh_unet(identities)
    scheduler = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False)
    original, edited = space.coefficients[0], space.coefficients[0] + 3 * torch.eye(space.n_components)[0]

    def run(**kwargs) -> torch.Tensor:
        return generate_latents(
            space,
            unet,
            scheduler,
            identities.prompt,
            original,
            steps=10,
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )

    plain = run()
    edited_only = generate_latents(
        space, unet, scheduler, identities.prompt, edited, steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.equal(plain, edited_only)
    torch.testing.assert_close(run(edited_coefficients=edited, edit_from_timestep=-1), plain, rtol=0, atol=0)
    torch.testing.assert_close(run(edited_coefficients=edited), edited_only, rtol=0, atol=0)
    delayed = run(edited_coefficients=edited, edit_from_timestep=500)
    assert not torch.equal(delayed, plain) and not torch.equal(delayed, edited_only)
    guided = run(guidance_scale=3.0)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_delayed_injection_inside_a_diffusers_pipeline(identities) -> None:
    space = identities.space
    pipe = tiny_pipeline(fresh_unet(identities))
    original = space.reconstruct(space.coefficients[1])
    edited = space.reconstruct(space.coefficients[1] + 3 * torch.eye(space.n_components)[1])
    prompt = identities.prompt
    call = dict(
        prompt_embeds=prompt,
        negative_prompt_embeds=torch.zeros_like(prompt),
        num_inference_steps=8,
        guidance_scale=2.0,
        output_type="latent",
    )
    with DelayedInjection(pipe.unet, space.layout, original, edited, edit_from_timestep=600) as injection:
        latents = pipe(generator=torch.Generator().manual_seed(0), **call).images
    timesteps = pipe.scheduler.timesteps
    assert injection.edited_calls == int((timesteps <= 600).sum()) > 0
    assert injection.original_calls == int((timesteps > 600).sum()) > 0
    with DelayedInjection(pipe.unet, space.layout, original, edited, edit_from_timestep=-1):
        untouched = pipe(generator=torch.Generator().manual_seed(0), **call).images
    assert latents.shape == untouched.shape == (1, 3, 8, 8) and not torch.equal(latents, untouched)
    # On exit the original model is back in the adapter.
    from vision_kernels.weightspace import vector_from_unet

    assert torch.equal(vector_from_unet(pipe.unet, space.layout), original)


def test_encode_images_draws_latents_from_the_vae_posterior() -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = encode_images(vae, images)
    assert latents.mean.shape == (2, 4, 8, 8) and latents.std is not None
    posterior = vae.encode(images).latent_dist
    torch.testing.assert_close(latents.mean, posterior.mean * vae.config.scaling_factor)
    a = latents.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, latents.sample(torch.Generator().manual_seed(1)))
    assert not torch.equal(a, latents.mean)
    assert torch.equal(Latents(latents.mean).sample(), latents.mean)
