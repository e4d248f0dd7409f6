"""The tokenizers as pyspark.ml citizens: Params, Pipeline, MLWritable/MLReadable on file and viewfs."""
import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Estimator, Model, Pipeline, PipelineModel

from sid_spark import ResidualKMeansModel, ResidualKMeansTokenizer, TokenizerConfig
from sid_spark.config import ConfigError
from sid_spark.encoder_tokenizer import EncoderModel, EncoderTokenizer
from sid_spark.errors import ArtifactError
from tests.conftest import make_df

PARAMS = dict(levels=2, codebookSize=8, seed=3, balance="none", maxIter=4)


@pytest.fixture(scope="module")
def catalog(spark):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    return make_df(spark, x, partitions=2)


def test_params_are_real_pyspark_params():
    tok = ResidualKMeansTokenizer(**PARAMS)
    assert isinstance(tok, Estimator)
    names = {p.name for p in tok.params}
    assert {"inputCol", "outputCol", "idCol", "seed", "maxIter", "tol", "levels", "codebookSize",
            "balance"} <= names
    assert tok.getCodebookSize() == 8 and tok.getMaxIter() == 4 and tok.getInputCol() == "embedding"
    # defaults declared once: the config dataclass's
    assert tok.getOrDefault("tol") == TokenizerConfig().tol and not tok.isSet("tol")
    text = tok.explainParams()
    assert "codebookSize: codes per level K" in text and "current: 8" in text
    assert tok.config == TokenizerConfig(levels=2, codebook_size=8, seed=3, balance="none", max_iter=4)


def test_config_keys_and_param_names_are_the_same_thing():
    a = ResidualKMeansTokenizer(codebook_size=8, max_iter=4, vector_col="vec")
    b = ResidualKMeansTokenizer(codebookSize=8, maxIter=4, inputCol="vec")
    c = ResidualKMeansTokenizer(TokenizerConfig(codebook_size=8, max_iter=4, vector_col="vec"))
    assert a.config == b.config == c.config
    assert b.setMaxIter(9).config.max_iter == 9


def test_validation_names_the_param():
    with pytest.raises(ConfigError, match="Param 'codebookSize'"):
        ResidualKMeansTokenizer(codebookSize=1)
    with pytest.raises(ConfigError, match="Param 'maxIter'"):
        ResidualKMeansTokenizer(maxIter=0)
    with pytest.raises(ConfigError, match="unknown Param 'codebooksize'"):
        ResidualKMeansTokenizer(codebooksize=8)
    with pytest.raises(ConfigError, match="Param 'balance'"):
        ResidualKMeansTokenizer().setBalance("roughly")


def test_copy_keeps_params_and_is_independent():
    tok = ResidualKMeansTokenizer(**PARAMS)
    other = tok.copy({tok.maxIter: 7})
    assert other.getMaxIter() == 7 and tok.getMaxIter() == 4 and other.uid == tok.uid


def test_fit_gives_a_model_with_a_summary(spark, catalog):
    model = ResidualKMeansTokenizer(**PARAMS).fit(catalog)
    assert isinstance(model, Model)
    s = model.summary
    assert s.numLevels == 2 and len(s.numIter) == 2 and all(1 <= n <= 4 for n in s.numIter)
    assert s.numItems == 400 and len(s.trainingCost) == 2
    # the residual's cost falls from level 1 to level 2
    assert s.trainingCost[1] < s.trainingCost[0]
    assert all(lo <= hi for lo, hi in s.codeSizeRange)
    assert model.getCodebookSize() == 8 and model.levels == 2 and model.config.levels == 2
    assert [c.shape for c in model.clusterCenters()] == [(8, 6), (8, 6)]


def test_fit_with_param_map_overrides(spark, catalog):
    tok = ResidualKMeansTokenizer(**PARAMS)
    model = tok.fit(catalog, {tok.codebookSize: 4})
    assert model.codebook_sizes == [4, 4] and tok.getCodebookSize() == 8


def _pipeline_roundtrip(spark, catalog, root):
    pipe = Pipeline(stages=[ResidualKMeansTokenizer(**PARAMS)])
    fitted = pipe.fit(catalog)
    fitted.write().overwrite().save(f"{root}/pipeline")
    loaded = PipelineModel.load(f"{root}/pipeline")
    assert isinstance(loaded.stages[0], ResidualKMeansModel)
    assert loaded.stages[0].uid == fitted.stages[0].uid
    assert loaded.stages[0].model_id == fitted.stages[0].model_id
    a = fitted.transform(catalog).select("item_id", "sid")
    b = loaded.transform(catalog).select("item_id", "sid")
    assert_df_equality(a, b, ignore_row_order=True)
    # the unfitted pipeline too
    pipe.write().overwrite().save(f"{root}/estimator")
    again = Pipeline.load(f"{root}/estimator").getStages()[0]
    assert isinstance(again, ResidualKMeansTokenizer) and again.config == pipe.getStages()[0].config
    return loaded


def test_pipeline_fit_transform_save_load_on_file(spark, catalog, tmp_path):
    _pipeline_roundtrip(spark, catalog, f"file://{tmp_path}")


def test_pipeline_save_load_on_viewfs(spark, catalog, tmp_path):
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    conf.set("fs.viewfs.mounttable.mlapi.link./data", f"file://{tmp_path}")
    _pipeline_roundtrip(spark, catalog, "viewfs://mlapi/data")
    assert (tmp_path / "pipeline" / "stages").is_dir()


def test_write_refuses_existing_path_without_overwrite(spark, catalog, tmp_path):
    model = ResidualKMeansTokenizer(**PARAMS).fit(catalog)
    model.write().save(str(tmp_path / "m"))
    with pytest.raises(ArtifactError, match="already exists"):
        model.write().save(str(tmp_path / "m"))
    model.write().overwrite().save(str(tmp_path / "m"))
    assert ResidualKMeansModel.load(str(tmp_path / "m")).model_id == model.model_id


def test_encoder_tokenizer_is_an_estimator_in_a_pipeline(spark, catalog, tmp_path):
    tok = EncoderTokenizer("simhash", tokens=2, bits=4, seed=1, sampleSize=400)
    assert isinstance(tok, Estimator) and tok.getEncoderName() == "simhash"
    assert tok.getEncoderParams() == {"tokens": 2, "bits": 4} and tok.getSeed() == 1
    with pytest.raises(ConfigError):
        EncoderTokenizer("simhash", no_such_key=3)
    fitted = Pipeline(stages=[tok]).fit(catalog)
    fitted.write().overwrite().save(str(tmp_path / "p"))
    loaded = PipelineModel.load(str(tmp_path / "p"))
    assert isinstance(loaded.stages[0], EncoderModel)
    assert_df_equality(fitted.transform(catalog).select("item_id", "sid"),
                       loaded.transform(catalog).select("item_id", "sid"), ignore_row_order=True)
