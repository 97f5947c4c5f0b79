"""lightly's MAE and DINO, built from lightly's parts with graphssl's hyperparameters (for benchmarks/peer.py).

Each model is written as lightly's examples write it; ``LightlyRun`` trains one
on lightly's PIL transforms in a torch DataLoader, chunk by chunk.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def scheduled(value) -> tuple[float, float]:
    """(start, end) of a graphssl schedule value (a number: constant)."""
    return (value.start, value.end) if hasattr(value, "start") else (float(value), float(value))


# ----------------------------------------------------------------------------- lightly's MAE and DINO

class LightlyMAE(nn.Module):
    """lightly's MAE example (examples/pytorch/mae.py) with a normalised-pixel target (MAE's norm_pix_loss)."""

    def __init__(self, vit: nn.Module, patch_size: int, mask_ratio: float, decoder_dim: int, decoder_depth: int,
                 decoder_heads: int, norm_pix: bool):
        super().__init__()
        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

        self.mask_ratio, self.patch_size, self.norm_pix = mask_ratio, patch_size, norm_pix
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=patch_size,
                                      embed_dim=vit.embed_dim, decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth,
                                      decoder_num_heads=decoder_heads, mlp_ratio=4.0, proj_drop_rate=0.0, attn_drop_rate=0.0)

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        from lightly.models import utils

        images = views[0]
        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(size=(b, self.sequence_length), mask_ratio=self.mask_ratio,
                                                     device=images.device)
        x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x_decode = self.decoder.embed(x_encoded)
        x_masked = utils.repeat_token(self.decoder.mask_token, (b, self.sequence_length))
        x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
        x_decoded = self.decoder.decode(x_masked)
        x_pred = self.decoder.predict(utils.get_at_index(x_decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
        if self.norm_pix:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return F.mse_loss(x_pred, target)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.backbone.encode(images=images)
        return {"cls": tokens[:, 0], "patches": tokens[:, 1:]}

    def after_step(self, step: int) -> None:
        pass


class LightlyDINO(nn.Module):
    """lightly's DINO example (examples/pytorch/dino.py) on a timm ViT, with DINO's schedules."""

    def __init__(self, vit: nn.Module, out_dim: int, hidden_dim: int, bottleneck_dim: int, norm_last_layer: bool,
                 freeze_last_layer_steps: int, teacher_temp: tuple[float, float], warmup_temp_steps: int,
                 student_temp: float, center_momentum: float, momentum: tuple[float, float], steps: int, n_global: int):
        super().__init__()
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.student_backbone = vit
        def head() -> nn.Module:
            return DINOProjectionHead(vit.embed_dim, hidden_dim, bottleneck_dim, out_dim, freeze_last_layer=1,
                                      norm_last_layer=norm_last_layer)

        self.student_head = head()
        self.teacher_backbone = copy.deepcopy(vit)
        self.teacher_head = head()  # weight-normed: not deep-copyable; starts as the student's copy, as in DINO
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=out_dim, warmup_teacher_temp=teacher_temp[0], teacher_temp=teacher_temp[1],
                                  warmup_teacher_temp_epochs=max(1, warmup_temp_steps), student_temp=student_temp,
                                  center_momentum=center_momentum)
        self.freeze_last_layer_steps, self.momentum, self.steps, self.n_global = freeze_last_layer_steps, momentum, steps, n_global

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher_backbone.eval()  # DINO's teacher has no drop path
        self.teacher_head.eval()
        return self

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        with torch.no_grad():
            teacher_out = [self.teacher_head(self.teacher_backbone(v)) for v in views[:self.n_global]]
        student_out = [self.student_head(self.student_backbone(v)) for v in views]
        return self.criterion(teacher_out, student_out, epoch=step)

    def before_optimizer_step(self, step: int) -> None:
        self.student_head.cancel_last_layer_gradients(current_epoch=0 if step < self.freeze_last_layer_steps else 1)

    def after_step(self, step: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, self.steps, self.momentum[0], self.momentum[1])
        update_momentum(self.student_backbone, self.teacher_backbone, m=m)
        update_momentum(self.student_head, self.teacher_head, m=m)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        cls = self.teacher_backbone(images)
        return {"cls": cls, "patches": cls[:, None]}


class Features(nn.Module):
    """An encoder interface for graphssl's extract_features: images -> {cls, patches}."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fn(images)


class LightlyRun:
    """Optimiser, schedules and the training step of a lightly model (what a lightly user writes)."""

    def __init__(self, model: nn.Module, loader, train_cfg, batch_size: int, steps: int):
        from lightly.models.utils import get_weight_decay_parameters

        from graphssl.schedules import scaled_lr

        self.model, self.loader, self.cfg, self.steps = model, loader, train_cfg, steps
        decay, no_decay = get_weight_decay_parameters([model])
        decay = [p for p in decay if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in decay)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "wd_scale": 1.0}, {"params": no_decay, "wd_scale": 0.0}],
                                           lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps)
        self.params = decay + no_decay
        self.peak_lr = scaled_lr(train_cfg.lr, batch_size, train_cfg.lr_scaling)
        w = train_cfg.warmup
        self.warmup_steps = int(w) if w >= 1 else round(w * steps)
        self.wd = scheduled(train_cfg.weight_decay)
        self.step_index = 0
        self.last_loss = float("nan")

    def run_chunk(self) -> None:
        from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule

        self.model.train()
        for views in self.loader:
            step = self.step_index
            lr = cosine_warmup_schedule(step, self.steps, self.peak_lr, self.cfg.min_lr, self.warmup_steps, 0.0)
            wd = cosine_schedule(step, self.steps, *self.wd)
            for group in self.optimizer.param_groups:
                group["lr"], group["weight_decay"] = lr, wd * group["wd_scale"]
            loss = self.model.loss(views, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.clip_grad is not None:
                if self.cfg.clip_mode == "per_tensor":
                    for p in self.params:
                        if p.grad is not None:
                            torch.nn.utils.clip_grad_norm_([p], self.cfg.clip_grad)
                else:
                    torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
            if hasattr(self.model, "before_optimizer_step"):
                self.model.before_optimizer_step(step)
            self.optimizer.step()
            self.model.after_step(step)
            self.last_loss = float(loss.detach())
            self.step_index += 1


def timm_vit(encoder_cfg, image_size: int) -> nn.Module:
    """The timm ViT graphssl's encoder.vit builds from the same config (without its mask paths)."""
    import timm

    kwargs = dict(img_size=encoder_cfg.img_size or image_size, patch_size=encoder_cfg.patch_size, num_classes=0,
                  in_chans=3, drop_path_rate=encoder_cfg.drop_path, dynamic_img_size=True)
    for key, value in (("depth", encoder_cfg.depth), ("embed_dim", encoder_cfg.embed_dim),
                       ("num_heads", encoder_cfg.num_heads), ("mlp_ratio", encoder_cfg.mlp_ratio),
                       ("init_values", encoder_cfg.layer_scale)):
        if value is not None:
            kwargs[key] = value
    return timm.create_model(encoder_cfg.arch, **kwargs)
