"""Config files, their :ARG words and --config overrides: one parser, one-line errors."""

import pytest

from experiments.config_loading import ConfigError, load_config
from experiments.configs import common


def test_overrides_convert_to_the_field_type():
    config = load_config("experiments/configs/lenet5_digits.py",
                         ["--config.num_epochs=3", "--config.learning_rate=1", "--config.augment=true",
                          "--config.lr_boundaries_epochs=(2, 3)", "--config.optimizer=adam",
                          "--config.model_overrides.style=original", "--config.data_dir=/tmp/tfds"])
    assert config.num_epochs == 3 and config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.augment is True and config.lr_boundaries_epochs == (2, 3) and config.optimizer == "adam"
    assert config.model_overrides.style == "original" and config.data_dir == "/tmp/tfds"


def test_unknown_field_names_the_closest_known_ones():
    with pytest.raises(ConfigError, match=r"no field 'num_epoch'\. Did you mean num_epochs"):
        load_config("experiments/configs/lenet5_digits.py", ["--config.num_epoch=3"])
    with pytest.raises(ConfigError, match="has no field 'foo'"):
        load_config("experiments/configs/lenet5_digits.py", ["--config.foo=1"])


def test_wrong_type_and_missing_file_and_bad_arg():
    with pytest.raises(ConfigError, match="num_epochs=three"):
        load_config("experiments/configs/lenet5_digits.py", ["--config.num_epochs=three"])
    with pytest.raises(ConfigError, match="does not exist. Known configs: .*lenet5_mnist.py"):
        load_config("experiments/configs/lenet5_mnsit.py")
    with pytest.raises(ConfigError, match="'runlcoal'. Did you mean 'runlocal'"):
        load_config("experiments/configs/knn.py:digits,runlcoal")


def test_parse_arg_choices_flags_and_options():
    args = common.parse_arg("mnist,runlocal,seeds=5", choices=("mnist", "digits"), options={"seeds": int})
    assert args.choice == "mnist" and "runlocal" in args and args.options == {"seeds": 5}
    assert common.parse_arg(None, choices=("mnist",), default_choice="mnist").choice == "mnist"
    with pytest.raises(ValueError, match="seeds='x' is not a valid int"):
        common.parse_arg("seeds=x", options={"seeds": int})
