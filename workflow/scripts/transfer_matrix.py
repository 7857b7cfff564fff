"""Snakemake adapter: the zero-shot transfer matrix (test folds), its training-only twin, and positive-transfer sets."""
import pandas as pd

from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to
from wsikt.transfer.matrix import positive_table, transfer_matrix

with log_to(snakemake.log[0]):
    thresholds = [float(t) for t in snakemake.params.thresholds]
    test = pd.concat([pd.read_csv(f, sep="\t") for f in snakemake.input.zero_shot], ignore_index=True)
    train = pd.concat([pd.read_csv(f, sep="\t") for f in snakemake.input.training], ignore_index=True)
    matrix = transfer_matrix(test)
    write_tsv(test, snakemake.output.folds)
    write_tsv(matrix, snakemake.output.matrix)
    write_tsv(transfer_matrix(train), snakemake.output.matrix_train)
    write_tsv(positive_table(matrix, thresholds), snakemake.output.positive)
