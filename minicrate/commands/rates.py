"""``minicrate rates``: coding rates of real digit images, per class and overall."""

from __future__ import annotations

from minicrate.commands import arguments as a

NAME = "rates"
HELP = "print the coding rate R of real digit images per class and for all classes"


def add_arguments(p):
    p.add_argument("--data", default="digits", choices=["digits", "mnist"])
    p.add_argument("--eps", type=a.real(1e-6, 1e6), default=0.5, help="quantisation precision ε")
    p.add_argument("--backend", default="numpy")


def class_rates(images, labels, eps, xp):
    """Each image is one token (a row): R for every class and for all images.

    Images are flattened and scaled to unit norm (as in MCR²), so the rate
    measures spread of directions, not brightness.  Returns ``(rows, R_all,
    delta_R)`` where ``delta_R = R(all) − Σ_j (N_j/N) R(class j)`` is the rate
    reduction with class memberships (MCR², Yu et al. 2020).
    """
    import numpy as np

    from minicrate.core.backend import host_to
    from minicrate.objective.rates import coding_rate

    Z = images.reshape(len(images), -1).astype(np.float64)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    R_all = float(coding_rate(host_to(xp, Z), eps))
    rows = []
    for c in np.unique(labels):
        Zc = Z[labels == c]
        rows.append((int(c), len(Zc), float(coding_rate(host_to(xp, Zc), eps))))
    compressed = sum(n / len(Z) * r for _, n, r in rows)
    return rows, R_all, R_all - compressed


def run(args):
    from minicrate.core.backend import get_backend
    from minicrate.data.images import load_raw

    xp = get_backend(args.backend)
    images, labels = load_raw(args.data)
    rows, R_all, delta = class_rates(images, labels, args.eps, xp)
    print(f"Coding rates of {len(labels)} real '{args.data}' images "
          f"(one image = one unit-norm token, eps = {args.eps}, backend {args.backend})")
    print(f"{'class':>6} {'images':>7} {'R (nats)':>10}")
    for c, n, r in rows:
        print(f"{c:>6} {n:>7} {r:>10.3f}")
    print(f"{'all':>6} {len(labels):>7} {R_all:>10.3f}")
    print(f"rate reduction R(all) - sum_j N_j/N R(class j) = {delta:.3f} nats")
    return 0
