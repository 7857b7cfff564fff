"""Snakemake adapter: chance references and paired comparisons of every method's fold predictions."""
from wsikt.core.logs import log_to
from wsikt.formats.stats_tables import write_stats_table
from wsikt.stats.settings import StatsSettings
from wsikt.stats.tables import chance_table, compare_table

with log_to(snakemake.log[0]):
    settings = StatsSettings.from_config(snakemake.params.stats)
    predictions = {m: list(getattr(snakemake.input, f"{m}_predictions")) for m in snakemake.params.methods}
    chance = chance_table(predictions, settings)
    write_stats_table(chance, "chance", snakemake.output.chance)
    write_stats_table(compare_table(predictions, settings, chance), "compare", snakemake.output.compare)
