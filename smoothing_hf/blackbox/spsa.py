"""SPSA-GC: zeroth-order optimization from loss values only (Oh et al., BlackVIP, CVPR 2023).

Simultaneous perturbation stochastic approximation (Spall, 1992) estimates the gradient of a loss L at
parameters w from two evaluations along one random direction Delta (entries +-1, Rademacher):

    g = [L(w + c_k Delta) - L(w - c_k Delta)] / (2 c_k) * Delta^-1        (Delta^-1 = Delta for +-1 entries)

averaged over ``num_directions`` directions, with decaying gains a_k = a / (k + 1 + A)^alpha and
c_k = c / (k + 1)^gamma at step k = 0, 1, ... BlackVIP's gradient correction (GC) adds Nesterov's
look-ahead momentum: the gradient is estimated at the look-ahead point w + beta v, then
v <- beta v - a_k g and w <- w + v. (BlackVIP's code uses the equivalent re-parameterized form of
Sutskever et al. 2013, which stores the look-ahead point; we store w itself, so the parameters after a
step are the ones the method converges on.)

Each gradient estimate costs two loss evaluations (queries of the black box) per direction; nothing is
differentiated, so the closure may run under ``torch.no_grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ..checks import check_number, check_positive_int


class SPSAGC(torch.optim.Optimizer):
    """SPSA with gradient correction (look-ahead momentum), as a ``torch.optim.Optimizer``.

    ``step(closure)`` calls ``closure()`` 2 * ``num_directions`` times; each call must evaluate the loss
    (a float or a 0-d tensor) of the parameters as they are at that moment, on the same data (common
    random numbers: one batch, one noise draw per step), and must not change them. The parameters' values
    are changed in place; ``requires_grad`` and ``.grad`` are not used.

    Args:
        params: the parameters to optimize (all of them are perturbed together).
        a: step size numerator (BlackVIP: 0.01).
        c: perturbation size numerator, in parameter units (BlackVIP: 0.005 to 0.02).
        A: stability offset of the step size, a_k = a / (k + 1 + A)^alpha (BlackVIP's o - 1).
        alpha: decay exponent of the step size (BlackVIP: 0.4).
        gamma: decay exponent of the perturbation size, c_k = c / (k + 1)^gamma (BlackVIP: 0.1 to 0.2).
        momentum: beta of the look-ahead momentum (BlackVIP: 0.9); 0 gives plain SPSA.
        num_directions: random directions averaged per gradient estimate (BlackVIP: 5).
        generator: the ``torch.Generator`` the directions are drawn from (on the parameters' device); a
            fixed seed makes the run reproducible.

    ``step`` returns the mean of the 2 * ``num_directions`` loss values: the loss near the look-ahead point.
    If the closure raises (e.g. the black box's query budget is exhausted), the parameters are put back to
    their values before the step and the error propagates.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        *,
        a: float = 0.01,
        c: float = 0.01,
        A: float = 0.0,
        alpha: float = 0.4,
        gamma: float = 0.1,
        momentum: float = 0.9,
        num_directions: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        positive, non_negative = {"a": a, "c": c}, {"A": A, "alpha": alpha, "gamma": gamma}
        defaults = {
            **{name: check_number(value, name, minimum=0, strict_minimum=True) for name, value in positive.items()},
            **{name: check_number(value, name, minimum=0) for name, value in non_negative.items()},
            "momentum": check_number(momentum, "momentum", minimum=0, maximum=1, strict_maximum=True),
            "num_directions": check_positive_int(num_directions, "num_directions"),
        }
        super().__init__(params, defaults)
        self.generator = generator
        self.state["spsa"] = {"step": 0, "evaluations": 0}

    @property
    def steps(self) -> int:
        """Steps taken."""
        return self.state["spsa"]["step"]

    @property
    def evaluations(self) -> int:
        """Calls of the closure so far (2 * ``num_directions`` per step)."""
        return self.state["spsa"]["evaluations"]

    def gains(self, k: int | None = None) -> tuple[float, float]:
        """(a_k, c_k) of the first parameter group at step ``k`` (default: the next step)."""
        group = self.param_groups[0]
        k = self.steps if k is None else k
        return group["a"] / (k + 1 + group["A"]) ** group["alpha"], group["c"] / (k + 1) ** group["gamma"]

    @torch.no_grad()
    def step(self, closure: Callable[[], float | torch.Tensor]) -> float:  # type: ignore[override]
        if closure is None:
            raise ValueError("SPSAGC.step needs a closure that evaluates the loss of the current parameters")
        k = self.steps
        losses = []
        for group in self.param_groups:
            params = [p for p in group["params"]]
            a_k = group["a"] / (k + 1 + group["A"]) ** group["alpha"]
            c_k = group["c"] / (k + 1) ** group["gamma"]
            beta = group["momentum"]
            start = [p.detach().clone() for p in params]
            velocity = [self.state[p].setdefault("velocity", torch.zeros_like(p)) for p in params]
            look_ahead = [w + beta * v for w, v in zip(start, velocity)]
            estimate = [torch.zeros_like(p) for p in params]
            try:
                for _ in range(group["num_directions"]):
                    directions = [self._rademacher(p) for p in params]
                    values = []
                    for sign in (1.0, -1.0):
                        for p, w, d in zip(params, look_ahead, directions):
                            p.copy_(w + sign * c_k * d)
                        self.state["spsa"]["evaluations"] += 1
                        values.append(_loss_value(closure()))
                    scale = (values[0] - values[1]) / (2 * c_k * group["num_directions"])
                    for g, d in zip(estimate, directions):
                        g.add_(d, alpha=scale)  # d^-1 = d for +-1 entries
                    losses.extend(values)
            except BaseException:  # a failed evaluation (budget exhausted, bad loss): back to the last step
                for p, w in zip(params, start):
                    p.copy_(w)
                raise
            for p, w, v, g in zip(params, start, velocity, estimate):
                v.mul_(beta).add_(g, alpha=-a_k)
                p.copy_(w + v)
        self.state["spsa"]["step"] = k + 1
        return sum(losses) / len(losses)

    def _rademacher(self, like: torch.Tensor) -> torch.Tensor:
        bits = torch.randint(0, 2, like.shape, generator=self.generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)


def _loss_value(value: float | torch.Tensor) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"the SPSA closure must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"the SPSA closure returned a non-finite loss ({value}); lower `c` or check the loss")
    return value
