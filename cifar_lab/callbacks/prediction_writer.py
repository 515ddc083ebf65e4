"""``predict`` results as a CSV file (one row per image) and a short table on stdout."""

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from cifar_lab.errors import ConfigError

CSV_COLUMNS = ["path", "class", "probability", "top3"]
TOP_K = 3


class CSVPredictionWriter(BasePredictionWriter):
    """Writes ``path, class, probability, top3`` for every predicted image once predicting ends.

    Args:
        output_path: the CSV file to write (its folder is created).
        show: how many rows to print as a table; the CSV always holds them all.
    """

    def __init__(self, output_path: str = "predictions.csv", show: int = 10) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path)
        self.show = show

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict" and trainer.world_size > 1:
            raise ConfigError("predict writes one CSV file: run it in one process (--trainer.devices 1)")

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        if not predictions:
            return
        probabilities = torch.cat(list(predictions)).float().cpu()
        # One predict dataloader: Lightning unwraps its predictions but not its batch indices.
        indices = [index for batch in batch_indices[0] for index in batch]
        names = trainer.datamodule.predict_names()
        class_names = pl_module.class_names
        top_probs, top_classes = probabilities.topk(min(TOP_K, probabilities.shape[1]), dim=1)
        rows = [
            {
                "path": names[index],
                "class": class_names[classes[0]],
                "probability": f"{probs[0]:.4f}",
                "top3": " ".join(f"{class_names[c]}:{p:.4f}" for c, p in zip(classes, probs)),
            }
            for index, probs, classes in zip(indices, top_probs.tolist(), top_classes.tolist())
        ]
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        with self.output_path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self._print_table(rows)

    def _print_table(self, rows: list[dict[str, str]]) -> None:
        shown = rows[: self.show]
        width = max(len(row["path"]) for row in shown)
        print(f"{'path':<{width}}  {'class':<10}  {'prob':>6}")
        for row in shown:
            print(f"{row['path']:<{width}}  {row['class']:<10}  {float(row['probability']):>6.3f}")
        more = f" (first {len(shown)} shown)" if len(rows) > len(shown) else ""
        print(f"{len(rows)} predictions written to {self.output_path}{more}")
