"""Measure how 'center' and 'average' inflation carry an image MViTv2 over to video.

Run ``python tools/analysis/inflation_evidence.py`` to print the figures quoted in the README.
A randomly initialised (official init) image model is inflated into the video model of the same
size; a clip made of one real photo repeated over time goes through both, and we report, per
inflation method, how far the video model's patch embedding (per temporal position) and final
features are from the image model's.
"""
import argparse
import os.path as osp

import numpy as np
import torch
import torch.nn.functional as F

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import inflate_state_dict
from mmvit_plugin.models.mvitv2 import MViTv2


def real_photo(size: int) -> torch.Tensor:
    import skimage
    from skimage.io import imread
    image = imread(osp.join(osp.dirname(skimage.__file__), 'data', 'chelsea.png'))
    x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None] / 255.0
    x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(image_arch, video_arch, size: int, frames: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    image_model = MViTv2(arch=image_arch, out_type='featmap')
    image_model.init_weights()
    image_model.eval()
    x = real_photo(size)
    clip = x.unsqueeze(2).repeat(1, 1, frames, 1, 1)
    with torch.no_grad():
        image_embed = image_model.patch_embed.proj(x)
        image_feat = image_model(x)[0].mean(dim=(2, 3))
    results = {}
    for method in ('center', 'average'):
        video_model = MViTv2(arch=video_arch, out_type='featmap')
        video_model.init_weights()
        state, _ = inflate_state_dict(image_model.state_dict(), video_model.state_dict(), method)
        video_model.load_state_dict(state)
        video_model.eval()
        with torch.no_grad():
            video_embed = video_model.patch_embed.proj(clip)  # (1, C, T', H, W)
            video_feat = video_model(clip)[0].mean(dim=(2, 3, 4))
        per_step = [relative_error(video_embed[:, :, t], image_embed)
                    for t in range(video_embed.shape[2])]
        results[method] = dict(
            embed_error_per_step=per_step,
            feature_relative_error=relative_error(video_feat, image_feat),
            feature_cosine=float(F.cosine_similarity(video_feat, image_feat).item()))
    return results


# Trained evidence: Fashion-MNIST image model -> clips of the same items -------------------------


def load_fashion_mnist(split: str, limit: int):
    import gzip
    root = '/usr/share/datasets/fashion-mnist'
    prefix = 'train' if split == 'train' else 't10k'
    with gzip.open(f'{root}/{prefix}-images-idx3-ubyte.gz') as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:limit]
    with gzip.open(f'{root}/{prefix}-labels-idx1-ubyte.gz') as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:limit]
    return torch.from_numpy(images.copy()).float() / 255.0, torch.from_numpy(labels.copy()).long()


CANVAS = 40


def place(items: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) items pasted on (N, 3, CANVAS, CANVAS) canvases at (row, col)."""
    out = torch.zeros(items.shape[0], CANVAS, CANVAS)
    for i in range(items.shape[0]):
        r, c = int(rows[i]), int(cols[i])
        out[i, r:r + 28, c:c + 28] = items[i]
    return ((out - 0.286) / 0.353).unsqueeze(1).repeat(1, 3, 1, 1)


def random_images(items, gen):
    n = items.shape[0]
    return place(items, torch.randint(0, CANVAS - 27, (n,), generator=gen),
                 torch.randint(0, CANVAS - 27, (n,), generator=gen))


DIRECTIONS = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])  # right, left, down, up


def moving_clips(items, frames, gen, static=False):
    """Clips of each item moving 1.5 px/frame in one of four directions (or standing still)."""
    n = items.shape[0]
    direction = torch.randint(0, 4, (n,), generator=gen)
    span = CANVAS - 28
    start = torch.randint(0, span + 1, (n, 2), generator=gen).float()
    step = DIRECTIONS[direction].float() * (0 if static else 1.5)
    # start so that the whole path stays on the canvas
    start = torch.where(step > 0, torch.zeros_like(start), start)
    start = torch.where(step < 0, torch.full_like(start, float(span)), start)
    clip = []
    for t in range(frames):
        pos = (start + step * t).round().clamp(0, span).long()
        clip.append(place(items, pos[:, 0], pos[:, 1]))
    return torch.stack(clip, dim=2), direction


class Classifier(torch.nn.Module):

    def __init__(self, arch: dict, num_classes: int):
        super().__init__()
        self.backbone = MViTv2(arch=arch, out_type='avg_featmap', drop_path_rate=0.0)
        self.backbone.init_weights()
        self.head = torch.nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x)[0])


def fit(model, batches, steps, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    for i in range(steps):
        x, y = batches(i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def accuracy(model, x, y, batch=100):
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def trained_evidence(seed: int, frames: int = 8, image_steps: int = 200, video_steps: int = 40):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_items, train_labels = load_fashion_mnist('train', 20000)
    test_items, test_labels = load_fashion_mnist('test', 500)
    base = dict(embed_dim=32, depth=4, num_heads=1, stage_starts=(1, 2, 3))
    image_arch = dict(base, img_size=(CANVAS, CANVAS))
    video_arch = dict(base, img_size=(frames, CANVAS, CANVAS), video=True)

    image_model = Classifier(image_arch, 10)

    def image_batch(i):
        idx = torch.randint(0, len(train_items), (64,), generator=gen)
        return random_images(train_items[idx], gen), train_labels[idx]

    fit(image_model, image_batch, image_steps, 2e-3)
    image_acc = accuracy(image_model, random_images(test_items, gen), test_labels)

    static_test, _ = moving_clips(test_items, frames, gen, static=True)
    moving_test, direction_test = moving_clips(test_items, frames, gen)
    row = dict(seed=seed, image_acc=image_acc)
    for method in ('center', 'average'):
        for task in ('item', 'direction'):
            model = Classifier(video_arch, 10 if task == 'item' else 4)
            image_state = dict(image_model.backbone.state_dict())
            if task == 'item':
                image_state.update({f'head.projection.{k}': v
                                    for k, v in image_model.head.state_dict().items()})
            target = dict(model.backbone.state_dict())
            target.update({f'head.projection.{k}': v for k, v in model.head.state_dict().items()})
            state, _ = inflate_state_dict(image_state, target, method)
            model.backbone.load_state_dict({k: v for k, v in state.items()
                                            if not k.startswith('head.')})
            model.head.load_state_dict({k[len('head.projection.'):]: v
                                        for k, v in state.items() if k.startswith('head.')})
            model.eval()
            if task == 'item':
                row[f'{method}/static zero-shot'] = accuracy(model, static_test, test_labels)
                row[f'{method}/moving zero-shot'] = accuracy(model, moving_test, test_labels)

            def clip_batch(i, task=task):
                idx = torch.randint(0, len(train_items), (16,), generator=gen)
                clips, direction = moving_clips(train_items[idx], frames, gen)
                return clips, (train_labels[idx] if task == 'item' else direction)

            fit(model, clip_batch, video_steps, 1e-3)
            target_test = test_labels if task == 'item' else direction_test
            row[f'{method}/{task} after {video_steps} steps'] = accuracy(
                model, moving_test, target_test)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', default='small', choices=['small', 'tiny-dict'],
                        help="'small': image S -> video S 16x4 at 224 (slow on a CPU)")
    parser.add_argument('--first-seed', type=int, default=0)
    parser.add_argument('--trained', type=int, default=0, metavar='SEEDS',
                        help='also train a small image model on Fashion-MNIST and compare the '
                        'methods on clips of moving items (zero-shot and after fine-tuning), '
                        'over this many seeds (about a minute per seed on 2 cores)')
    args = parser.parse_args()
    # One thread: on a shared 2-core machine, OpenMP threads waiting on each other cost more
    # than they give for models this small.
    torch.set_num_threads(1)
    for seed in range(args.first_seed, args.first_seed + args.trained):
        row = trained_evidence(seed)
        print(', '.join(f'{k}: {v:.3f}' if isinstance(v, float) else f'{k}: {v}'
                        for k, v in row.items()), flush=True)
    if args.trained:
        return
    if args.size == 'small':
        results = measure('small', 'small-16x4', 224, 16)
    else:
        base = dict(embed_dim=32, depth=4, num_heads=1, stage_starts=(1, 2, 3))
        results = measure(dict(base, img_size=(64, 64)),
                          dict(base, img_size=(8, 64, 64), video=True, with_cls_token=True),
                          64, 8)
    for method, r in results.items():
        steps = ', '.join(f'{e:.2e}' for e in r['embed_error_per_step'])
        print(f'{method:8s} patch-embedding relative error per temporal step: [{steps}]')
        print(f'{method:8s} final features (mean of patch tokens): relative error '
              f'{r["feature_relative_error"]:.4f}, cosine {r["feature_cosine"]:.4f}')


if __name__ == '__main__':
    main()
