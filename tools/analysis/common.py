"""Helpers shared by the analysis scripts and the tests (tests/helpers.py loads this file)."""
import torch


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Distinct random values in every parameter (norm scales near 1), so mix-ups show; the
    module is left in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.05
            is_norm_scale = 'norm' in name and name.endswith('weight') and param.dim() == 1
            param.copy_(noise + 1.0 if is_norm_scale else noise)
    module.eval()  # (mmpretrain's MViT.train returns None, so no chaining)
    return module
