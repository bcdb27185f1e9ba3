"""writeorder: did every write a guest was told is durable really reach stable storage, in order?

Stages (each a function over pandas DataFrames; see toolkit.events for the tables):
traceset -> parsers -> requests -> lineage/clocks -> durability -> checks -> report.
"""

__version__ = "0.1.0"
