"""Write a corpus copy with every text cut to its first N characters, as one zstd-compressed Parquet file.

The default model's GPU run reads such a copy (``--max-chars 80000``): the full corpus (82 MB) does not fit
the 64 MiB the GPU machine accepts, and 80K characters still hold a whole 64K-token crop of every long
document. Usage::

    python scripts/cap_corpus.py ../shared/data/corpus .gpu/train.parquet --max-chars 80000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reformer_retrieval.train.data import corpus_files


def cap_corpus(corpus: Path, output: Path, max_chars: int) -> int:
    """Copy ``(id, text)`` of every shard of ``corpus`` into ``output`` with texts cut to ``max_chars``;
    returns the number of documents written (atomically: temp file + rename)."""
    tables = [pq.read_table(f, columns=["id", "text"]) for f in corpus_files(corpus)]
    table = pa.concat_tables(tables)
    table = table.set_column(1, "text", pc.utf8_slice_codeunits(table.column("text"), 0, max_chars))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=19)
    tmp.replace(output)
    return table.num_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="Parquet file or directory of train-*.parquet shards")
    p.add_argument("output", type=Path, help="output Parquet file")
    p.add_argument("--max-chars", type=int, default=80_000, help="characters kept per document (default 80000)")
    args = p.parse_args()
    n = cap_corpus(args.corpus, args.output, args.max_chars)
    print(f"{n} documents written to {args.output}")


if __name__ == "__main__":
    main()
