"""neonet_find_best_configuration DATASET --archs pattennet pattennet_fine resnet10 radiomics fusion

Trains (or reuses) the listed classifier runs with the nested protocol, then chooses the NeoCls configuration by
nested cross-validation (:mod:`neonet_toolkit.evaluation.best_configuration`): prints every candidate's pooled
out-of-fold AUC next to the honest AUC of the selection procedure, and writes the choice that ``neonet_predict``
uses by default. ``fusion`` in ``--archs`` (or ``--ensembles``) adds every pair of runs as a fit-free ensemble.
"""
from __future__ import annotations

import argparse

from neonet_toolkit.evaluation.best_configuration import find_best_configuration, report_markdown
from neonet_toolkit.networks.classifiers import canonical_arch
from neonet_toolkit.run.common import add_common, cli_main
from neonet_toolkit.run.experiment import run_experiment
from neonet_toolkit.training.cls_data import parse_ratio
from neonet_toolkit.training.radiomics import radiomics_run_name
from neonet_toolkit.utilities.identifiers import ResultLayout, cls_run_name


def candidate_run_names(archs: list[str], ratios: list) -> list[str]:
    """The run names the grid of ``archs`` × ``ratios`` produces with the nested protocol (radiomics once)."""
    runs = []
    for a in archs:
        if a.lower() == "fusion":
            continue
        if a.lower() == "radiomics":
            runs.append(radiomics_run_name("gt"))
            continue
        runs += [cls_run_name(canonical_arch(a), r, "gt", "nested") for r in ratios]
    return list(dict.fromkeys(runs))


def find_best(dataset, archs: list[str], ratios=(0.0,), folds=None, device: str = "auto",
              configuration: str | None = None, epochs: int | None = None, ensembles: bool = False,
              train: bool = True, allow_failed_gate: bool = False) -> dict:
    """Train what is missing (``train``), then the nested choice."""
    layout = ResultLayout.for_dataset(dataset)
    ratios = [parse_ratio(r) for r in ratios]
    if train:
        status = run_experiment(layout, [a for a in archs if a.lower() != "fusion"], ratios, folds, device,
                                configuration, epochs, early_stopping="nested", evaluate=False, shortcut=False,
                                allow_failed_gate=allow_failed_gate)
        if status["failed"]:
            raise ValueError("some candidate runs failed to train:\n  " + "\n  ".join(status["failed"]))
    ensembles = ensembles or any(a.lower() == "fusion" for a in archs)
    return find_best_configuration(layout, candidate_run_names(archs, ratios), folds, ensembles)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neonet_find_best_configuration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset id or name, e.g. 501")
    p.add_argument("--archs", nargs="+", required=True,
                   help="classifier families (see neonet_train ... cls --help), radiomics, fusion (= pair ensembles)")
    p.add_argument("--ratios", nargs="+", default=["0"], help="synthetic ratios of the deep runs (default 0; auto too)")
    p.add_argument("--folds", nargs="+", type=int, default=None, help="outer folds (default: all)")
    p.add_argument("--ensembles", action="store_true", help="add every pair of runs as a fit-free ensemble")
    p.add_argument("--no-train", dest="train", action="store_false", help="only choose among finished runs")
    p.add_argument("-device", "--device", default="auto")
    p.add_argument("--configuration", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--allow-failed-gate", dest="allow_failed_gate", action="store_true")
    add_common(p)
    return p


def main(argv=None) -> int:
    result: dict = {}
    rc = cli_main(build_parser, lambda a: result.update(find_best(
        a.dataset, a.archs, a.ratios, a.folds, a.device, a.configuration, a.epochs, a.ensembles, a.train,
        a.allow_failed_gate)), argv)
    if rc == 0:
        print(report_markdown(result))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
