"""The pictures ``qkd sweep --plot`` and ``qkd eve-sweep --plot`` draw (matplotlib, the
``plot`` extra).

They draw what the JSON of the same command holds, nothing computed here: every
simulated value with its standard error as an error bar, the title from the model and
the parameters actually used, and a rate of zero as what it is -- the end of the
curve, marked at the model's reach -- never as a cliff down to a floor value.
"""

from __future__ import annotations

from typing import Any

from hybridkex.errors import InvalidParameter

__all__ = ["MODEL_LABELS", "plot_eve_sweep", "plot_sweep"]

MODEL_LABELS = {
    "as-run": "as run: Z-keyed (p_Z^2 of clicks), X estimates e1, Cascade f",
    "vacuum-weak": "GLLP, vacuum + weak decoy (Ma et al. 2005)",
    "infinite-decoy": "GLLP, infinite decoys (Ma et al. 2005)",
    "no-decoy": "GLLP, no decoy (Gottesman et al. 2004)",
    "single-photon": "GLLP, ideal single-photon source",
}
_FLOOR = 1e-9  # the lowest rate the axis shows


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidParameter("--plot needs matplotlib: pip install 'hybridkex[plot]'") from None
    return plt


def _positive(xs: list[float], ys: list[float | None]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_sweep(result: dict[str, Any], path: str) -> None:
    """Rate against distance: the model, the published curves beside it, PLOB, and the
    simulated points with their error bars."""
    plt = _pyplot()
    pts = result["points"]
    km = [p["distance_km"] for p in pts]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x, y = _positive(km, [p["plob_bound"] for p in pts])
    ax.semilogy(x, y, "k--", linewidth=1, label="PLOB bound (fibre)")
    model = result["model"]
    x, y = _positive(km, [p["analytic_rate"] for p in pts])
    line = ax.semilogy(x, y, linewidth=2, label=MODEL_LABELS.get(model, model))[0]
    reach = result["max_distance_km"]
    if reach > 0 and km and reach <= km[-1]:
        ax.axvline(reach, color=line.get_color(), linestyle=":", linewidth=1)
        ax.annotate(f"reach {reach:.1f} km", (reach, _FLOOR * 10), rotation=90,
                    ha="right", va="bottom", color=line.get_color(), fontsize=8)
    for name, reach_km in result.get("published_max_distance_km", {}).items():
        x, y = _positive(km, [p["published_rates"][name] for p in pts])
        other = ax.semilogy(x, y, linewidth=1.2, label=MODEL_LABELS.get(name, name))[0]
        if 0 < reach_km <= (km[-1] if km else 0):
            ax.axvline(reach_km, color=other.get_color(), linestyle=":", linewidth=1)
    simulated = [p for p in pts if p.get("simulated_rate") is not None]
    shown = [p for p in simulated if p["simulated_rate"] > 0]
    if shown:
        ax.errorbar([p["distance_km"] for p in shown], [p["simulated_rate"] for p in shown],
                    yerr=[p["simulated_stderr"] for p in shown], fmt="o", markersize=4,
                    capsize=3, label="Monte Carlo simulation (± standard error)")
    zero = [p for p in simulated if p["simulated_rate"] <= 0]
    if zero:
        ax.plot([p["distance_km"] for p in zero], [_FLOOR * 1.5] * len(zero), "v",
                color="grey", label="simulation: no key proven")
    ax.set_xlabel("distance (km)")
    ax.set_ylabel("secret key rate (bits per pulse)")
    ax.set_ylim(_FLOOR, 10.0)
    ax.set_title(sweep_title(result), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_title(result: dict[str, Any]) -> str:
    """The model and the parameters a sweep ran with, and whether points are simulated."""
    p = result["parameters"]
    f = result.get("f_ec", p["f_ec"])
    text = (f"decoy-state BB84, {result['model']} model: mu {p['mu']:g}, nu {p['nu']:g}, "
            f"p_mu {p['p_mu']:g}, p_nu {p['p_nu']:g}, p_Z {p['p_z']:g}, f {f:g}\n"
            f"e_det {p['e_detector']:g}, Y0 {p['y0']:g}, η_Bob {p['eta_bob']:g}, "
            f"{p['alpha_db_per_km']:g} dB/km")
    if result.get("simulation"):
        text += f"\npoints: {result['simulation']}"
    return text


def plot_eve_sweep(result: dict[str, Any], path: str) -> None:
    """Measured QBER against Eve's fraction, with error bars, the theory and the abort
    threshold."""
    plt = _pyplot()
    pts = result["points"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    fractions = [p["eve_fraction"] for p in pts]
    ax.plot(fractions, [p["qber_theory"] for p in pts], "-", linewidth=1.5,
            label="model expectation (the simulator's exact statistics)")
    if result["eve"] == "intercept-resend":
        e_det = result["parameters"]["e_detector"]
        ax.plot(fractions, [e_det + f / 4 for f in fractions], "--", linewidth=1,
                label=f"e_det + p/4 (e_det {e_det:g})")
    measured = [p for p in pts if p["qber"] is not None]
    for aborted, style, label in ((False, "o", "measured, key distilled"),
                                  (True, "s", "measured, round aborted")):
        chosen = [p for p in measured if p["aborted"] is aborted]
        if chosen:
            ax.errorbar([p["eve_fraction"] for p in chosen], [p["qber"] for p in chosen],
                        yerr=[p["qber_stderr"] for p in chosen], fmt=style, markersize=5,
                        capsize=3, label=f"{label} (± standard error)")
    ax.axhline(result["qber_abort"], color="red", linestyle=":", linewidth=1.2,
               label=f"abort threshold {result['qber_abort']:g}")
    ax.set_xlabel("Eve's fraction p" + (" (of pulses intercepted)"
                                        if result["eve"] == "intercept-resend"
                                        else " (of single-photon pulses blocked)"))
    ax.set_ylabel(f"QBER ({result['qber_basis']} basis)")
    ax.set_ylim(bottom=0.0)
    ax.set_title(f"{result['eve']} at {result['distance_km']:g} km, "
                 f"{result['pulses']:.3g} pulses per point\n{result['simulation']}",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
