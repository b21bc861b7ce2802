"""pairlake's side of bench_warc_pairs, as a whole process like the baseline: what ``pairlake
parse-warc`` does for one file (extract_pairs, then a Parquet file of candidates).

    python warc_pairlake.py CRAWL.warc.gz PAIRS.parquet   # prints {"pages": ..., "pairs": ..., "peak_rss_mb": ...}
"""

from __future__ import annotations

import json
import sys

from infra.config import ExtractConfig
from peak_memory import peak_rss_mb  # beside this script
from spark_jobs.warc_pairs import write_pairs_parquet


def main(argv: list[str]) -> None:
    counts = write_pairs_parquet([argv[1]], argv[2], "bench", ExtractConfig())
    print(json.dumps({"pages": counts["html_pages"], "pairs": counts["pairs"], "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv)
