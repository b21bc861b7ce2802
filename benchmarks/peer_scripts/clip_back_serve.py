"""clip-retrieval's own back end, ``clip_back``, serving pairlake's benchmark index: what a user would
run instead of ``pairlake serve``.

Run by the clip-retrieval peer virtualenv's Python (benchmarks/peers.py):

    python clip_back_serve.py --index INDEX.faiss --metadata METADATA.parquet --checkpoint VIT.pt \
        --folder CACHE/clip_back-N --port PORT [--metadata-backend parquet|hdf5|arrow]

It lays out ``--folder`` as clip_back reads an index folder, once per saved index (``--save-id``):
``image.index`` is a symlink to pairlake's faiss file (an IVF index whose ids are the metadata rows'
positions, which is what clip_back assumes), and ``metadata/`` holds the url and caption columns in
id order. Then it starts ``clip_back`` on 127.0.0.1:PORT with the index named ``research`` and
everything that would download at start off: no multilingual text model, safety model, violence
detector or aesthetic embeddings. The CLIP model is open_clip's ViT-B-32 with the weights in
``--checkpoint``: all_clip reads ``open_clip:ViT-B-32/<path>`` as (model, pretrained), and open_clip
loads a pretrained tag that is an existing path as a local checkpoint, so nothing is fetched.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
from pathlib import Path

# Set before open_clip / huggingface_hub are imported: any remote fetch fails instead of waiting.
os.environ["HF_HUB_OFFLINE"] = "1"

import flask  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

INDEX_NAME = "research"  # the indice_name the benchmark's request bodies carry
COLUMNS = ["url", "caption"]
_STAMP = "prepared.json"
# The module: the package's __init__ rebinds ``clip_retrieval.clip_back`` to the function of that name.
clip_back_module = importlib.import_module("clip_retrieval.clip_back")


def prepare(folder: Path, index: Path, metadata: Path, save_id: str, backend: str) -> None:
    """Lay out ``folder`` for clip_back from pairlake's index file and metadata, unless it already
    holds this save's (a rebuilt index renumbers its ids)."""
    stamp = folder / _STAMP
    wanted = {"save_id": save_id, "index": str(index), "backend": backend}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "metadata").mkdir(parents=True)
    (folder / "image.index").symlink_to(index)
    ids = pq.read_table(metadata, columns=["id"])["id"].to_numpy()
    # clip_back maps a result id to the metadata row at that position.
    if not np.array_equal(ids, np.arange(len(ids))):
        raise SystemExit(f"{metadata}: ids are not 0..n-1 in order; clip_back needs a row per id at its position")
    table = pq.read_table(metadata, columns=COLUMNS)
    if backend == "arrow":  # ArrowMetadataProvider memory-maps IPC files
        with pa.OSFile(str(folder / "metadata" / "0.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    else:  # parquet is read as is; hdf5 is converted from it by clip_back at its first start
        pq.write_table(table, folder / "metadata" / "0.parquet")
    stamp.write_text(json.dumps(wanted))


class _LoopbackFlask(flask.Flask):
    """clip_back runs its app on 0.0.0.0; on these machines servers bind loopback only."""

    def run(self, host: str | None = None, port: int | None = None, **options) -> None:
        super().run(host="127.0.0.1", port=port, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="pairlake's index.faiss")
    parser.add_argument("--metadata", type=Path, required=True, help="pairlake's metadata parquet (id order)")
    parser.add_argument("--save-id", required=True, help="the index save's id, from pairlake's manifest")
    parser.add_argument("--checkpoint", type=Path, required=True, help="an open_clip ViT-B-32 state_dict")
    parser.add_argument("--folder", type=Path, required=True, help="clip_back's index folder (a cache)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metadata-backend", choices=("parquet", "hdf5", "arrow"), default="parquet",
                        help="clip_back's metadata provider (parquet: its default)")
    args = parser.parse_args()
    prepare(args.folder, args.index.resolve(), args.metadata, args.save_id, args.metadata_backend)
    indices = args.folder / "indices.json"
    indices.write_text(json.dumps({INDEX_NAME: str(args.folder)}))
    clip_back_module.Flask = _LoopbackFlask
    clip_back_module.clip_back(
        indices_paths=str(indices), port=args.port, columns_to_return=COLUMNS,
        clip_model=f"open_clip:ViT-B-32/{args.checkpoint.resolve()}",
        enable_hdf5=args.metadata_backend == "hdf5", use_arrow=args.metadata_backend == "arrow",
        enable_mclip_option=False, provide_safety_model=False, provide_violence_detector=False,
        provide_aesthetic_embeddings=False)


if __name__ == "__main__":
    main()
