"""ScheduleFree+ as a one-run baseline of benchmarks/tune.py: written here from the update equations of Defazio,
"ScheduleFree+: Scaling Learning-Rate-Free & Schedule-Free Learning to Large Language Models" (arXiv 2605.19095,
2026). No learning rate: each step's size is a Polyak step, the loss over the l1 norm of the gradient.

One step t, with g the gradient and F the loss at the training point y, z the base iterate, x the average:

    I     = beta_t * <g, z - x>                       (beta_t goes from beta_sf to beta_sf_max over anneal_steps)
    e     = beta_p * e + (1 - beta_p) * |g|_1 * sqrt(pi / 2),   e_hat = e / (1 - beta_p ** t)
    alpha = warm_t * max(0, F + I) / e_hat            (warm_t: linear warmup over warmup_steps)
    z     = z - alpha**2 * weight_decay * y            (decoupled decay, AdamC form)
    m, v  = Adam's moments of g;  z = z - alpha * m_hat / (sqrt(v_hat) + eps)
    x     = (1 - c) * x + c * z,  c = w_t / sum(w),  w_t = t**r * max(alpha so far)**weight_power  (c = 1 in warmup)
    y     = beta_t * x + (1 - beta_t) * z              (the parameters hold y while training, x while evaluating)

The paper tunes its constants for language models; the values below are our reading for small tasks (the momentum
and averaging constants of Schedule-Free AdamW, a 5% warmup) and are stated in the benchmark's table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class ScheduleFreePlus(torch.optim.Optimizer):
    """``step(loss)`` takes the loss of the batch whose gradient is in ``.grad``; ``train()`` / ``eval()`` switch
    the parameters between the training point and the average, as schedulefree's optimizers do."""

    def __init__(self, params: Iterable[torch.nn.Parameter], *, warmup_steps: int = 0, anneal_steps: int = 1,
                 betas: tuple[float, float] = (0.9, 0.999), beta_sf: float = 0.9, beta_sf_max: float = 0.98,
                 beta_p: float = 0.9, weight_decay: float = 0.0, eps: float = 1e-8, r: float = 0.0,
                 weight_power: float = 2.0) -> None:
        defaults = {"betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.warmup_steps, self.anneal_steps = max(0, warmup_steps), max(1, anneal_steps)
        self.beta_sf, self.beta_sf_max, self.beta_p = beta_sf, beta_sf_max, beta_p
        self.r, self.weight_power = r, weight_power
        self.t, self.e, self.alpha_max, self.weight_sum = 0, 0.0, 0.0, 0.0
        self.training = True

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            state.update(z=p.detach().clone(), x=p.detach().clone(), m=torch.zeros_like(p), v=torch.zeros_like(p))
        return state

    def _beta(self) -> float:
        return self.beta_sf + (self.beta_sf_max - self.beta_sf) * min(1.0, self.t / self.anneal_steps)

    @torch.no_grad()
    def eval(self) -> None:
        """The parameters hold the average x (what is evaluated and saved)."""
        if self.training:
            for p in self._params():
                if self.state[p]:
                    p.copy_(self.state[p]["x"])
        self.training = False

    @torch.no_grad()
    def train(self) -> None:
        """The parameters hold the training point y again."""
        if not self.training:
            beta = self._beta()
            for p in self._params():
                if self.state[p]:
                    p.copy_(beta * self.state[p]["x"] + (1 - beta) * self.state[p]["z"])
        self.training = True

    @torch.no_grad()
    def step(self, loss: float | torch.Tensor) -> None:  # type: ignore[override]
        if not self.training:
            raise RuntimeError("ScheduleFreePlus.step() in eval mode: call train() first")
        live = [p for p in self._params() if p.grad is not None]
        self.t += 1
        beta = self._beta()
        inner = sum(float(torch.sum(p.grad * (self._state(p)["z"] - self._state(p)["x"]))) for p in live)
        l1 = sum(float(p.grad.abs().sum()) for p in live) * math.sqrt(math.pi / 2)
        self.e = self.beta_p * self.e + (1 - self.beta_p) * l1
        e_hat = self.e / (1 - self.beta_p ** self.t)
        warm = min(1.0, self.t / self.warmup_steps) if self.warmup_steps else 1.0
        alpha = warm * max(0.0, float(loss) + beta * inner) / max(e_hat, 1e-30)
        self.alpha_max = max(self.alpha_max, alpha)
        weight = self.t ** self.r * self.alpha_max ** self.weight_power
        self.weight_sum += weight
        c = 1.0 if self.t <= self.warmup_steps or self.weight_sum == 0 else weight / self.weight_sum
        for group in self.param_groups:
            self._move(group, [p for p in group["params"] if p.grad is not None], alpha, beta, c)

    def _move(self, group: dict[str, object], live: list[torch.nn.Parameter], alpha: float, beta: float,
              c: float) -> None:
        beta1, beta2 = group["betas"]  # type: ignore[misc]
        eps, decay = float(group["eps"]), float(group["weight_decay"])  # type: ignore[arg-type]
        for p in live:
            s = self._state(p)
            s["z"].sub_(p, alpha=alpha * alpha * decay)
            s["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
            s["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            m_hat = s["m"] / (1 - beta1 ** self.t)
            v_hat = s["v"] / (1 - beta2 ** self.t)
            s["z"].addcdiv_(m_hat, v_hat.sqrt().add_(eps), value=-alpha)
            s["x"].lerp_(s["z"], c)
            p.copy_(beta * s["x"] + (1 - beta) * s["z"])
