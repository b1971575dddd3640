"""recsys_core: the recommender library behind the recsys Dagster pipeline. It never imports Dagster."""

__version__ = "0.1.0"
