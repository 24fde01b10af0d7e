"""Console scripts: ``fhgs-map`` (offline mapping) and ``fhgs-bench`` (benchmarks).

Errors a user can fix (bad dataset, bad parameter, missing checkpoint) are printed as one clear
line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("fhgs_ros")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def map_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fhgs-map", description="Offline FHGS mapping of a dataset folder "
                                "(NeRF transforms.json, COLMAP text model, OpenSfM reconstruction, or a synthetic scene).")
    p.add_argument("--data", required=True, type=Path, help="dataset folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (metrics.json, map, renders, mesh)")
    p.add_argument("--iterations", type=int, help="optimization iterations (default: offline.iterations)")
    p.add_argument("--no-ndfd", action="store_true", help="plain 2DGS baseline: NDFD losses off, same settings")
    p.add_argument("--config", type=Path, help="parameter YAML (default: config/fhgs.yaml)")
    p.add_argument("--features", choices=["auto", "label", "sam", "sam2", "vgg16"], help="feature extractor")
    p.add_argument("--sam-checkpoint", help="path to an official segment_anything checkpoint (.pth)")
    p.add_argument("--sam-model", choices=["vit_b", "vit_l", "vit_h", "vit_t", "vit_tiny"],
                   help="SAM model type of the checkpoint (vit_t: MobileSAM)")
    p.add_argument("--sam-input-size", type=int, help="SAM encoder input long side (1024 official; 512 faster)")
    p.add_argument("--sam2-checkpoint", help="path to an official SAM 2.1 checkpoint (sam2.1_hiera_*.pt)")
    p.add_argument("--sam2-model", choices=["hiera_t", "hiera_s", "hiera_b+", "hiera_l"],
                   help="SAM 2.1 model of the checkpoint")
    p.add_argument("--backend", choices=["auto", "native", "reference"], help="rasterizer backend")
    p.add_argument("--downscale", type=float, help="image downscale factor (e.g. 0.25)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any parameter, e.g. --set mapper.lambda_ext=0.3 (value parsed as YAML)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    _setup_logging(a.verbose)

    import yaml

    from fhgs_ros.config import ConfigError, default_config_path, load_config
    from fhgs_ros.datasets.base import DatasetError

    ov: dict = {}

    def put(key: str, value) -> None:
        d = ov
        parts = key.split(".")
        for k in parts[:-1]:
            d = d.setdefault(k, {})
        d[parts[-1]] = value

    if a.no_ndfd:
        put("mapper.ndfd_enabled", False)
    if a.features:
        put("features.extractor", a.features)
    if a.sam_checkpoint:
        put("features.sam_checkpoint", a.sam_checkpoint)
        if not a.features:
            put("features.extractor", "sam")
    if a.sam_model:
        put("features.sam_model", a.sam_model)
    if a.sam_input_size:
        put("features.sam_input_size", a.sam_input_size)
    if a.sam2_checkpoint:
        put("features.sam2_checkpoint", a.sam2_checkpoint)
        if not a.features:
            put("features.extractor", "sam2")
    if a.sam2_model:
        put("features.sam2_model", a.sam2_model)
    if a.backend:
        put("mapper.backend", a.backend)
    if a.downscale:
        put("offline.downscale", a.downscale)
    if a.seed is not None:
        put("mapper.seed", a.seed)
    for item in a.set:
        if "=" not in item:
            print(f"fhgs-map: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        put(k.strip(), yaml.safe_load(v))
    try:
        cfg = load_config(a.config or default_config_path(), ov)
        if cfg.features.extractor == "sam" and not cfg.features.sam_checkpoint:
            from fhgs_ros.features.sam import find_default_checkpoint, missing_checkpoint_help
            found = find_default_checkpoint(cfg.features.sam_model)
            if found is None:
                print(f"fhgs-map: --features sam needs a checkpoint.\n"
                      f"{missing_checkpoint_help(cfg.features.sam_model)}", file=sys.stderr)
                return 2
            cfg.features.sam_checkpoint = str(found)
        if not a.data.exists():
            raise DatasetError(f"{a.data}: dataset folder does not exist")
        from fhgs_ros.offline import run_offline
        metrics = run_offline(cfg, a.data, a.out, a.iterations)
    except (ConfigError, DatasetError) as exc:
        print(f"fhgs-map: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # feature checkpoint / camera errors raised as ValueError subclasses
        if type(exc).__name__ in {"CheckpointError", "CameraError", "MapFileError", "ExtractorConfigError", "WeightsError"}:
            print(f"fhgs-map: error: {exc}", file=sys.stderr)
            return 2
        raise
    show = {k: v for k, v in metrics.items() if k != "config"}
    print(json.dumps(show, indent=2))
    return 0


BENCHES = ("raster", "step", "features", "node", "replay", "pipeline", "geometry")


def bench_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: fhgs-bench {{{','.join(BENCHES)},all}} [options]\n"
              "Each benchmark prints a table and writes bench/results/NAME.json.")
        return 0 if argv else 2
    _setup_logging(False)
    names = BENCHES if argv[0] == "all" else (argv[0],)
    rc = 0
    for name in names:
        if name not in BENCHES:
            print(f"fhgs-bench: unknown benchmark {name!r} (choose from {', '.join(BENCHES)})", file=sys.stderr)
            return 2
        try:
            mod = importlib.import_module(f"fhgs_ros.bench.{name}")
        except ImportError as exc:
            print(f"fhgs-bench: benchmark {name!r} is not available ({exc})", file=sys.stderr)
            rc = 2
            continue
        rc = max(rc, int(mod.run(argv[1:]) or 0))
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(map_main())
