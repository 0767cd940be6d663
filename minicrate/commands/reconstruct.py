"""``minicrate reconstruct``: CRATE-MAE reconstructions of test images (original / masked / reconstruction)."""

from __future__ import annotations

from minicrate.commands import arguments as a

NAME = "reconstruct"
HELP = "figure of a CRATE-MAE run's reconstructions: original / masked input / reconstruction"


def add_arguments(p):
    p.add_argument("path", type=a.existing_path,
                   help="a train-mae run directory (its latest checkpoint) or a .npz checkpoint")
    p.add_argument("--count", type=a.integer(1, a.MAX_FIGURE_IMAGES, why="images in one figure"), default=8,
                   help="number of test images (default 8)")
    p.add_argument("--out", type=a.figure_file,
                   help=".png, .pdf or .svg path (default: reconstruct.png in the run directory)")
    p.add_argument("--backend", default="numpy")


def reconstruct_figure(path, *, count=8, out=None, backend="numpy"):
    """Draw ``count`` test images of the run's data set, each as three rows:
    the original, the masked input (masked patches grey) and the
    reconstruction (visible patches kept, masked ones predicted), with the
    fixed evaluation masks of ``train-mae``.  Returns ``(png, mse)``: the
    masked-patch MSE of the drawn images."""
    import os

    import numpy as np

    from minicrate.core.backend import get_backend, host_to, to_numpy
    from minicrate.measure.plotting import figure, save_figure
    from minicrate.models.mae import reconstruct
    from minicrate.models.masking import random_masking
    from minicrate.training.mae import load_mae_run, load_split

    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    params, config, extra = load_mae_run(path, backend=backend)
    tc = extra.get("train_config", {})
    split = load_split(tc.get("data", "mnist"), config, test_size=tc.get("test_size"), seed=tc.get("split_seed", 0))
    # one image per class first, then the next ones, in test order
    first = [int(np.flatnonzero(split.y_test == c)[0]) for c in np.unique(split.y_test)]
    rest = [i for i in range(len(split.y_test)) if i not in set(first)]
    idx = np.asarray((first + rest)[:count])
    mask = random_masking(idx, config.num_patches, config.mask_ratio, seed=tc.get("split_seed", 0))
    xp = get_backend(backend)
    x = host_to(xp, split.x_test[idx], config.dtype)
    merged, pred = reconstruct(params, x, mask, config)
    merged, pred = to_numpy(merged), to_numpy(pred)
    P, g = config.patch_size, config.grid_size
    pix_mask = np.kron(mask.reshape(-1, g, g), np.ones((P, P), dtype=bool))  # (n, H, W)
    mse = float(((pred - split.x_test[idx]) ** 2)[:, 0][pix_mask].mean())
    show = lambda a: np.clip(a * split.std + split.mean, 0, 1)  # noqa: E731
    fig = figure(max(1.1 * count + 0.8, 4.0), 4.0)
    axes = fig.subplots(3, count, squeeze=False)
    for j in range(count):
        masked = np.ma.masked_array(show(split.x_test[idx[j], 0]), mask=pix_mask[j])
        for row, (img, title) in enumerate(((show(split.x_test[idx[j], 0]), "original"),
                                            (masked, "masked input"),
                                            (show(merged[j, 0]), "reconstruction"))):
            ax = axes[row, j]
            cmap = "gray"
            if row == 1:
                import matplotlib

                cmap = matplotlib.colormaps["gray"].with_extremes(bad=(0.55, 0.6, 0.75))
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=8)
    masked_n = config.num_patches - int((~mask[0]).sum())
    fig.suptitle(f"CRATE-MAE on {tc.get('data', '?')} test images, {masked_n}/{config.num_patches} patches masked\n"
                 f"masked-patch MSE {mse:.3f} (standardised pixels)", fontsize=9)
    if out is None:
        base = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        out = os.path.join(base, "reconstruct.png")
    return save_figure(fig, out), mse


def run(args):
    from minicrate.training.rundir import require_kind

    require_kind(args.path, "mae", NAME)
    png, mse = reconstruct_figure(args.path, count=args.count, out=args.out, backend=args.backend)
    print(f"wrote {png} (masked-patch MSE of these images {mse:.4f})")
    return 0
