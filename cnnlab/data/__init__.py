"""Datasets: where files are found (sources), how they are split and batched (datamodule), augmentation."""
