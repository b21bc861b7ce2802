"""The kept-set rule in Spark SQL (above the threshold in float32, never NaN) and the kept pairs'
caption languages."""

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from infra.tables import KEPT_PAIRS
from spark_jobs.caption_language import LID_CHARS, detect_languages
from spark_jobs.kept_set import kept, with_languages


def test_kept_is_strictly_above_the_threshold_and_never_nan(spark):
    values = [0.1, float(np.float32(0.28)), 0.2800001, 0.3, float("nan")]
    frame = spark.createDataFrame([(v,) for v in values], "similarity float")
    got = [row[0] for row in frame.select(kept(F.col("similarity"), 0.28)).collect()]
    assert got == [False, False, True, True, False]


def test_each_kept_pair_gets_its_captions_language():
    captions = {
        "fr": "Un petit chat noir dort tranquillement sur le canapé du salon",
        "de": "Der große Hund läuft schnell über die grüne Wiese im Garten",
        "ja": "東京の桜は春になるととても美しく咲きます",
        "en": "A golden retriever puppy playing with a ball in the park",
        "es": "El perro marrón corre por el parque con los niños",
        "ru": "Маленькая собака играет в саду под ярким солнцем",
    }
    order = [*captions, "fr"]  # a caption twice in a batch
    rows = {f.name: [None] * len(order) for f in KEPT_PAIRS.schema if f.name != "language"}
    rows.update(uid=[f"u{i}" for i in range(len(order))], warc_file=["w"] * len(order), url=["http://h/x"] * len(order),
                caption=[captions[lang] for lang in order], similarity=[0.3] * len(order), model_id=["m"] * len(order))
    schema = pa.schema([f for f in KEPT_PAIRS.schema if f.name != "language"])
    out = list(with_languages([pa.RecordBatch.from_pydict(rows, schema=schema)]))
    assert len(out) == 1 and out[0].schema == KEPT_PAIRS.schema
    assert out[0].column("language").to_pylist() == order
    assert out[0].column("uid").to_pylist() == rows["uid"]


def test_language_id_reads_a_captions_start_only():
    start = "Un petit chat noir dort tranquillement sur le canapé du salon, près de la fenêtre ouverte. "
    caption = (start * 3)[:LID_CHARS] + "The rest of this very long caption is in English. " * 40
    rest = caption[LID_CHARS:]
    found = detect_languages([caption, caption[:LID_CHARS], rest])
    assert found[caption] == found[caption[:LID_CHARS]]
    assert (found[caption][0], found[rest][0]) == ("fr", "en")
