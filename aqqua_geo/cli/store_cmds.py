"""``aqqua info`` (what is in an AqQua store) and ``aqqua store compact|upgrade``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def store_info(store_dir: str | Path) -> dict:
    """Summary of a store: counts per instrument/source, time and space range, labels."""
    from aqqua_geo.store import AqquaStore

    store = AqquaStore(store_dir)
    # only the columns summarised here are scanned (not the whole table)
    df = store.metadata_columns(["instrument", "source", "datetime", "lat", "lon", "depth_min", "depth_max",
                                 "pixel_size_um", "label", "label_status", "shard"])
    info: dict = {
        "path": str(store.path),
        "format_version": store.manifest["format_version"],
        "objects": len(df),
        "rejected": store.manifest["counts"]["rejected"],
        "duplicates": store.manifest["counts"]["duplicates"],
        "by_instrument": {k: int(v) for k, v in df["instrument"].value_counts().sort_index().items()},
        "by_source": {k: int(v) for k, v in df["source"].value_counts().sort_index().items()},
    }
    if len(df):
        labelled = df["label"].notna()
        info.update(
            datetime_range=[df["datetime"].min().isoformat(), df["datetime"].max().isoformat()],
            lat_range=[float(df["lat"].min()), float(df["lat"].max())],
            lon_range=[float(df["lon"].min()), float(df["lon"].max())],
            depth_range_m=[float(df["depth_min"].min()), float(df["depth_max"].max())],
            pixel_size_um_range=[float(df["pixel_size_um"].min()), float(df["pixel_size_um"].max())],
            labelled=int(labelled.sum()),
            label_coverage=float(labelled.mean()),
            label_status={k: int(v) for k, v in df["label_status"].fillna("none").value_counts().items()},
            n_labels=int(df.loc[labelled, "label"].nunique()),
            top_labels={k: int(v) for k, v in df.loc[labelled, "label"].value_counts().head(10).items()},
        )
    rej = store.rejected()
    info["rejected_by_reason"] = {k: int(v) for k, v in rej["reason"].value_counts().sort_index().items()}
    info["shards"] = store.manifest.get("shards", [])
    info["problems"] = []
    for shard in sorted(set(df["shard"].tolist())):  # cheap: LMDB's own size vs the file's, no image read
        try:
            store._shards._env(int(shard))
        except OSError as err:
            info["problems"].append(str(err))
    return info


def _render(info: dict) -> str:
    lines = [f"AqQua store {info['path']} (format {info['format_version']}): {info['objects']} objects, "
             f"{info['duplicates']} duplicates, {info['rejected']} rejected records"]
    for key in ("by_instrument", "by_source"):
        lines.append(f"  {key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in info[key].items()))
    if info["objects"]:
        lines += [
            f"  dates: {info['datetime_range'][0]} .. {info['datetime_range'][1]}",
            f"  lat: {info['lat_range'][0]:.4f} .. {info['lat_range'][1]:.4f}   lon: {info['lon_range'][0]:.4f} .. {info['lon_range'][1]:.4f}"
            f"   depth: {info['depth_range_m'][0]:g} .. {info['depth_range_m'][1]:g} m",
            f"  pixel size: {info['pixel_size_um_range'][0]:.4g} .. {info['pixel_size_um_range'][1]:.4g} um",
            f"  labels: {info['labelled']}/{info['objects']} labelled ({100 * info['label_coverage']:.1f} %), "
            f"{info['n_labels']} distinct; status " + ", ".join(f"{k} {v}" for k, v in info["label_status"].items()),
            "  top labels: " + ", ".join(f"{k} {v}" for k, v in info["top_labels"].items()),
        ]
    if info["rejected_by_reason"]:
        lines.append("  rejected: " + ", ".join(f"{k} {v}" for k, v in info["rejected_by_reason"].items()))
    size = sum(s.get("bytes", 0) for s in info["shards"])
    lines.append(f"  images: {len(info['shards'])} shard(s), {size / 1e6:.2f} MB")
    lines += [f"  PROBLEM: {p}" for p in info.get("problems", [])]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add ``info`` and the ``store`` group (compact, upgrade) to *app*."""
    app.command("info")(info_cmd)
    group = typer.Typer(help="Maintain an AqQua store.", no_args_is_help=True)
    group.command("compact")(compact_cmd)
    group.command("upgrade")(upgrade_cmd)
    app.add_typer(group, name="store")


def compact_cmd(
    store: Path = typer.Argument(..., help="Store directory."),
    target_rows: int = typer.Option(1_000_000, "--target-rows", help="Rows per merged part file."),
) -> None:
    """Merge small metadata part files (content and row order unchanged)."""
    from aqqua_geo.store.maintenance import compact

    try:
        summary = compact(store, target_rows=target_rows)
    except (OSError, ValueError, RuntimeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    for kind, (before, after) in summary.items():
        typer.echo(f"{kind}: {before} -> {after} part file(s)")


def upgrade_cmd(store: Path = typer.Argument(..., help="Store directory.")) -> None:
    """Convert a format-1 store to format 2 in place (its files become parts; index built)."""
    from aqqua_geo.store.maintenance import upgrade

    try:
        done = upgrade(store)
    except (OSError, ValueError, RuntimeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{store}: upgraded to format 2" if done else f"{store}: already format 2")


def info_cmd(
    store: Path = typer.Argument(..., help="Store directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    check: bool = typer.Option(False, "--check", help="Also read and verify every image (decodes, matches its "
                               "content hash); exit 1 naming each bad object."),
) -> None:
    """Counts per instrument/source, date and space range, label coverage of a store."""
    try:
        info = store_info(store)
    except (OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    problems = None
    if check:
        from aqqua_geo.store import AqquaStore

        problems = AqquaStore(store).verify()  # includes the shard problems
        info["check"] = {"objects": info["objects"], "bad": len(problems), "problems": problems}
    typer.echo(json.dumps(info, indent=2) if as_json else _render(info))
    if info["problems"] and not check:
        raise typer.Exit(1)
    if problems is not None:
        if not as_json:
            typer.echo(f"  check: {info['objects'] - len(problems)}/{info['objects']} images verified"
                       + ("" if not problems else f", {len(problems)} bad:"))
            for p in problems[:50]:
                typer.echo(f"    - {p}")
        if problems:
            raise typer.Exit(1)
