"""Snakemake adapter: HistoKT's fine-tuned matrix from every (method, target, fold) cells file."""
from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to
from wsikt.transfer.finetuned_matrix import finetuned_matrix, read_cells, write_cells

with log_to(snakemake.log[0]):
    cells = read_cells(snakemake.input.cells)
    write_cells(cells, snakemake.output.cells)
    write_tsv(finetuned_matrix(cells), snakemake.output.matrix)
