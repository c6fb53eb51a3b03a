"""Training of black-box PEFTSmoothing: a BlackVIP coordinator tuned from the target's answers alone.

In front of the query-only target (``BlackBoxClassifier``) goes a ``Coordinator`` (Oh et al., BlackVIP,
CVPR 2023; ``smoothing_hf.input_modules.coordinator``): a frozen pretrained encoder and a small trainable
decoder that turn the *noisy* image into a visual prompt the size of the image; the target classifies
clip(x_noisy + prompt(x_noisy), 0, 1). Since the prompt is computed from the noisy input alone, the composite
target(coordinator(.)) is one fixed function of x + noise, and Cohen's certificate holds for it like for any
base classifier (``SmoothedImageClassifier.from_pretrained(target, sigma=..., input_module=coordinator)``).
The decoder is trained by SPSA-GC (``SPSAGC``) on the cross-entropy of the black box's outputs on noisy
training images: ``train_coordinator``. ``pretrain_autoencoder`` gives the coordinator an encoder without
labels where no pretrained backbone can be downloaded; ``query_accuracy`` measures a black box (or the
composite) on noisy images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, PretrainedConfig, PreTrainedModel, ViTConfig, get_cosine_schedule_with_warmup

from ..checks import check_positive_int, check_sigma
from ..input_modules.coordinator import Coordinator
from ..noise import NoiseCollator
from .spsa import SPSAGC
from .target import BlackBoxClassifier

logger = logging.getLogger(__name__)


def train_coordinator(
    coordinator: Coordinator,
    black_box: BlackBoxClassifier,
    dataset: torch.utils.data.Dataset,
    *,
    sigma: float,
    steps: int,
    batch_size: int = 64,
    optimizer: SPSAGC | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``coordinator``'s trainable parameters by SPSA-GC so that ``black_box`` classifies
    clip(x + e + prompt(x + e)) correctly, e ~ N(0, sigma^2 I); only the black box's outputs are used.

    Each step draws a batch of ``batch_size`` training images (``dataset`` yields dicts with
    "pixel_values" [C, H, W] in [0, 1] and "labels"/"label", e.g. a dataset with an
    ``ImageClassificationTransform``), adds fresh noise (``NoiseCollator(sigma, seed=seed)``), computes the
    encoder features once, and lets ``optimizer`` (default ``SPSAGC`` over the trainable parameters with
    its defaults, directions drawn with ``seed``) evaluate the cross-entropy of the black box's answers at
    its perturbed parameters: 2 * num_directions * batch_size queries per step. A tqdm bar shows the
    queries spent and the running loss.

    Returns ``{"steps", "queries", "calls", "seconds", "losses"}`` (queries and calls of this training
    only; ``losses``: the mean loss of each step's evaluations).

    Raises:
        ValueError: ``sigma`` <= 0, ``steps`` or ``batch_size`` < 1, labels outside the black box's classes.
        QueryBudgetExceeded: the black box's query budget runs out (the parameters keep their last step).
    """
    sigma = check_sigma(sigma)
    steps, batch_size = check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size")
    if optimizer is None:
        params = [p for p in coordinator.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the coordinator has no trainable parameters (requires_grad)")
        optimizer = SPSAGC(params, generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
        collate_fn=NoiseCollator(sigma, seed=seed), generator=torch.Generator().manual_seed(seed),
    )
    coordinator.eval()
    device = next(coordinator.buffers()).device
    queries, calls, started = black_box.queries, black_box.calls, time.perf_counter()
    losses: list[float] = []
    bar = tqdm(total=steps, desc="SPSA-GC", disable=not progress)
    batches = _forever(loader)
    try:
        for _ in range(steps):
            batch = next(batches)
            noisy, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
            with torch.no_grad():
                features = coordinator.features(noisy)

            losses.append(optimizer.step(_cross_entropy(coordinator, black_box, noisy, features, labels)))
            running = sum(losses[-50:]) / len(losses[-50:])
            bar.set_postfix(queries=black_box.queries - queries, loss=f"{running:.4f}", refresh=False)
            bar.update()
    finally:
        bar.close()
    return {
        "steps": len(losses), "queries": black_box.queries - queries, "calls": black_box.calls - calls,
        "seconds": time.perf_counter() - started, "losses": losses,
    }


def query_accuracy(
    classify: Callable[[torch.Tensor], torch.Tensor], dataset: torch.utils.data.Dataset, *, sigma: float,
    batch_size: int = 250, seed: int = 0, device: torch.device | str = "cpu",
) -> float:
    """Accuracy (a fraction) of ``classify`` (pixels [B, C, H, W] -> [B, K] scores: a black box, or the
    black box behind a coordinator) on ``dataset``'s images plus N(0, sigma^2 I), each image one query.

    The noise is a ``NoiseCollator(sigma, seed=seed, deterministic=True)`` stream over the dataset in order,
    as ``SmoothingTrainer`` evaluates (its seed is 0, with batches of ``per_device_eval_batch_size``), so
    with the same batch size the numbers compare with ``examples/train.py``'s. Batches go to ``device``."""
    sigma = check_sigma(sigma)
    collator = NoiseCollator(sigma, seed=seed, deterministic=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            scores = classify(batch["pixel_values"].to(device))
            scores = getattr(scores, "logits", scores)
            correct += int((scores.argmax(dim=1).cpu() == batch["labels"]).sum())
            total += len(batch["labels"])
    return correct / total


def pretrain_autoencoder(
    images: torch.Tensor,
    encoder_config: PretrainedConfig | None = None,
    *,
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    max_seconds: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> PreTrainedModel:
    """A coordinator encoder pretrained without labels: ``AutoModel.from_config(encoder_config)`` trained
    with a linear decoder (then discarded) to reconstruct ``images`` [N, C, H, W] (clean, in [0, 1]) from its
    ``pooler_output`` (mean squared error, Adam). For the embedded default, where no pretrained backbone can
    be downloaded; never initialized from the target's weights. The default config is a small ViT (hidden
    size 64, 2 layers, 4 x 4 patches of the image). Stops after ``steps`` or ``max_seconds``. Returns the
    encoder in eval mode; save it with ``save_pretrained`` and load it with ``Coordinator.from_encoder``."""
    if images.dim() != 4 or images.min() < 0 or images.max() > 1:
        raise ValueError(f"`images` must be [N, C, H, W] pixels in [0, 1], got shape {tuple(images.shape)}")
    _, channels, height, width = images.shape
    if encoder_config is None:
        encoder_config = ViTConfig(
            image_size=height, patch_size=max(1, min(height, width) // 4), num_channels=channels, hidden_size=64,
            num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = AutoModel.from_config(encoder_config)
    with torch.no_grad():
        dim = encoder(pixel_values=images[:1]).pooler_output.flatten(1).shape[1]
    decoder = torch.nn.Linear(dim, channels * height * width)
    model = torch.nn.ModuleDict({"encoder": encoder, "decoder": decoder}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=steps)
    started = time.perf_counter()
    bar = tqdm(total=steps, desc="autoencoder", disable=not progress)
    done = 0
    for step in range(steps):
        batch = images[torch.randint(0, len(images), (batch_size,), generator=generator)]
        reconstruction = torch.sigmoid(decoder(encoder(pixel_values=batch).pooler_output.flatten(1)))
        loss = F.mse_loss(reconstruction, batch.flatten(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.update()
        done = step + 1
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
    bar.close()
    seconds = time.perf_counter() - started
    logger.info("autoencoder: %d steps in %.0f s, reconstruction MSE %.4f", done, seconds, loss.item())
    return encoder.eval()


def _cross_entropy(
    coordinator: Coordinator, black_box: BlackBoxClassifier, noisy: torch.Tensor, features: torch.Tensor,
    labels: torch.Tensor,
) -> Callable[[], float]:
    """The SPSA closure of one step: the black box's cross-entropy on the composite images of ``noisy``
    at the coordinator's current parameters (the encoder's ``features`` computed once per step)."""

    def closure() -> float:
        log_probs = black_box.log_probabilities(coordinator.compose(noisy, features))
        if labels.max() >= log_probs.shape[1]:
            raise ValueError(
                f"labels go up to {int(labels.max())} but the black box returns {log_probs.shape[1]} classes: the "
                "dataset's label set does not match the target's"
            )
        return F.nll_loss(log_probs, labels).item()

    return closure


def _forever(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader
