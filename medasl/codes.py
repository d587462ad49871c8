"""Every diagnostic code, with the long explanation `medasc explain CODE` prints.

A code is added here when a stage first reports it; a test checks that every code the
sources report has an entry, and that every entry's example is real medas text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    title: str
    explanation: str
    example: str = ""
    fix: str = ""


CODES: dict[str, Code] = {
    "E0001": Code(
        "unexpected token",
        "The parser met a word or symbol that cannot come at this place. The message names"
        " what it found and lists what could have come instead.",
        "pipeline p {\n  x = resample(img spacing=(1, 1, 1) mm)\n}",
        "pipeline p {\n  x = resample(img, spacing=(1, 1, 1) mm)\n}",
    ),
    "E0002": Code(
        "unexpected character",
        "A character that is not part of the language, for example arithmetic (`+`, `*`),"
        " or a string left open at the end of a line. medas has no arithmetic: write the"
        " value you mean.",
        'pipeline p {\n  x = window(img, level=40, width=200 * 2)\n}',
        'pipeline p {\n  x = window(img, level=40, width=400)\n}',
    ),
    "E0003": Code(
        "unexpected end of file",
        "The file ends in the middle of something: usually a pipeline whose closing `}`"
        " is missing, or a call whose `)` is missing.",
        "pipeline p {\n  x = nifti(\"ct.nii.gz\")",
        "pipeline p {\n  x = nifti(\"ct.nii.gz\")\n}",
    ),
    "E0004": Code(
        "invalid escape in a string",
        "Inside a string, a backslash starts an escape: `\\\"` (a quote), `\\\\` (a"
        " backslash), `\\n`, `\\t`. Any other letter after a backslash is an error, because"
        " Windows paths such as `C:\\data\\new` would silently change meaning.",
        "x = nifti(\"C:\\data\\ct.nii.gz\")",
        "x = nifti(\"C:/data/ct.nii.gz\")",
    ),
    "E0010": Code(
        "cannot read the file",
        "The `.medas` file given on the command line does not exist or cannot be read.",
    ),
    "E0101": Code(
        "unknown name",
        "A name is used that is not a parameter, a binding, a transform or an imported"
        " operator. When the name is a standard operator whose module is not imported, the"
        " message says which import to add.",
        "import std.io\npipeline p {\n  ct = nifti(\"ct.nii.gz\") as Image[3, CT]\n  x = ct |> resample(spacing=(1, 1, 1) mm)\n}",
        "import std.io, std.pre\npipeline p {\n  ct = nifti(\"ct.nii.gz\") as Image[3, CT]\n  x = ct |> resample(spacing=(1, 1, 1) mm)\n}",
    ),
    "E0103": Code(
        "defined twice",
        "Two parameters, bindings or transforms of one pipeline have the same name. Every"
        " value needs its own name, because the pipeline is a graph of named values.",
        "pipeline p {\n  x = nifti(\"a.nii.gz\")\n  x = nifti(\"b.nii.gz\")\n}",
    ),
    "E0104": Code(
        "unknown parameter",
        "A call names a parameter the operator (or transform) does not have. The message"
        " suggests the closest one; `medasc ops NAME` shows its signature.",
        "x = ct |> resample(spaceing=(1, 1, 1) mm)",
        "x = ct |> resample(spacing=(1, 1, 1) mm)",
    ),
    "E0105": Code(
        "missing argument",
        "A parameter without a default value was not given.",
        "x = ct |> window(level=40)",
        "x = ct |> window(level=40, width=400)",
    ),
    "E0106": Code(
        "too many positional arguments",
        "More arguments were given without names than the operator has parameters. With"
        " `|>` the value on the left is the first argument already.",
        "x = ct |> window(ct, 40, 400)",
        "x = ct |> window(40, 400)",
    ),
    "E0107": Code(
        "argument given twice",
        "The same parameter was given twice, for example by position and by name.",
        "x = window(ct, 40, level=40, width=400)",
    ),
    "E0108": Code(
        "not callable",
        "Only operators and transforms can be called; a binding or a parameter is a value.",
        "y = ct(1)",
    ),
    "E0109": Code(
        "unknown field",
        "`.name` was used on a value without that field. Pairs have `.image` and `.label`"
        " (also on a dataset of pairs); splits have `.train`, `.val` and `.test`.",
        "x = folds.validation",
        "x = folds.val",
    ),
    "E0110": Code(
        "not an operator",
        "The right side of `|>` must be an operator or a transform, and a transform"
        " needs its input.",
        "x = ct |> 3",
    ),
    "E0111": Code(
        "unknown module",
        "`import` names a standard module that does not exist. The standard modules are"
        " std.io, std.pre, std.aug, std.data, std.nets, std.losses, std.train, std.post,"
        " std.metrics, std.viz and std.report.",
        "import std.preprocessing",
        "import std.pre",
    ),
    "E0112": Code(
        "cannot read an imported file",
        "`import \"file.medas\"` names a file that does not exist (relative to the importing file),"
        " or one that is not a `.medas` file: only medas modules are imported, and a file of"
        " another kind is not read (its lines are never quoted in a diagnostic).",
    ),
    "E0113": Code(
        "invalid type",
        "A type written after `as` (or on a parameter) is unknown or malformed: an unknown"
        " type name, an unknown modality, or the wrong number of values in `[...]`.",
        "ct = nifti(\"ct.nii.gz\") as Image[3, CTT]",
        "ct = nifti(\"ct.nii.gz\") as Image[3, CT]",
    ),
    "E0114": Code(
        "nested too deeply",
        "Calls, tuples, fields or types are nested inside one another more than 64 levels"
        " deep, or values, transforms and calls depend on one another through more levels"
        " than the checker can follow. No real pipeline comes near it: give inner values"
        " names of their own.",
        "pipeline p {\n  x = rescale(rescale(rescale(rescale(1))))   # ... 65 levels\n}",
        "pipeline p {\n  a = rescale(1)\n  b = rescale(a)   # one level each\n}",
    ),
    "E0115": Code(
        "wrong number of inputs to a transform",
        "A user transform was given more or fewer inputs than it declares.",
        "prep(x) = x |> rescale(0, 1)\nout = prep(a, b)",
    ),
    "E0201": Code(
        "type mismatch",
        "A value was given to a slot of another type: every operator input is a typed slot,"
        " and every value a typed plug. The message shows both types.",
        "fit = train(net, ct, loss=dice_ce)",
        "fit = train(net, cases, loss=dice_ce)",
    ),
    "E0202": Code(
        "ascription contradicts the value",
        "`as Type` may fill in what the checker cannot know from the file alone (the"
        " modality of a NIfTI, the number of classes), but not contradict what it knows:"
        " a label map cannot be declared an image.",
        "seg = nifti(\"seg.nii.gz\") as Image[3, CT]\nlabels = seg as LabelMap[3, 2]",
    ),
    "E0203": Code(
        "wrong modality",
        "The operator is only meaningful for one modality. Window/level works in Hounsfield"
        " units, which only CT has; stain normalization needs RGB pathology; N4 bias"
        " correction is for MR. An image whose modality is not declared does not fit"
        " either: declare it with `as`.",
        "t1 = nifti(\"t1.nii.gz\") as Image[3, MR]\nx = t1 |> window(level=40, width=400)",
        "t1 = nifti(\"t1.nii.gz\") as Image[3, MR]\nx = t1 |> zscore",
    ),
    "E0204": Code(
        "dimensionality mismatch",
        "2D and 3D do not mix: a 3D network cannot be trained on 2D slices, a 3-value"
        " spacing does not apply to a 2D image.",
        "net = unet3d(classes=2)\nfit = train(net, tiles, loss=dice_ce)   # tiles are 2D",
        "net = unet2d(classes=2)\nfit = train(net, tiles, loss=dice_ce)",
    ),
    "E0205": Code(
        "number of classes mismatch",
        "The network's `classes`, the label maps and the metrics must agree on the number"
        " of classes, background included.",
        "cases = folder(\"d\", image=\"*_img.nii.gz\", label=\"*_seg.nii.gz\") as Pair<Image[3, CT], LabelMap[3, 3]>\nnet = vnet(classes=2)",
        "net = vnet(classes=3)",
    ),
    "E0206": Code(
        "missing unit",
        "Physical sizes need their unit, so that nobody confuses millimetres with voxels or"
        " degrees with radians: write `1.5 mm`, `(1, 1, 2) mm`, `10 deg`.",
        "x = ct |> resample(spacing=(1.5, 1.5, 2))",
        "x = ct |> resample(spacing=(1.5, 1.5, 2) mm)",
    ),
    "E0207": Code(
        "wrong unit",
        "A unit follows numbers only, and it must be of the right kind: a spacing is a"
        " length (mm, cm, um), an angle is in deg or rad, memory in GB or MB.",
        "x = ct |> resample(spacing=(1, 1, 2) rad)",
        "x = ct |> resample(spacing=(1, 1, 2) mm)",
    ),
    "E0208": Code(
        "not a valid choice",
        "The parameter takes one of a fixed set of words (an enumeration, such as the"
        " interpolation `auto | nearest | linear | bspline`), and this is not one of them.",
        "x = ct |> resample(spacing=(1, 1, 1) mm, interp=cubic)",
        "x = ct |> resample(spacing=(1, 1, 1) mm, interp=bspline)",
    ),
    "E0209": Code(
        "wrong number of values",
        "A tuple has one value per spatial axis: three for a 3D image, two for a 2D one.",
        "x = ct |> crop_or_pad((128, 128))   # ct is 3D",
        "x = ct |> crop_or_pad((128, 128, 64))",
    ),
    "E0210": Code(
        "not something to show or report",
        "`show` takes figures, tables and metrics; `report` takes reports such as"
        " `html(...)` and `excel(...)`.",
        "show pred",
        "show overlay(images, pred)",
    ),
    "E0211": Code(
        "function does not fit",
        "An operator passed as a value (a loss, a metric) must take what the slot will give"
        " it: a segmentation loss takes a probability map and a label map, a classification"
        " loss takes scores and class labels.",
        "fit = train(net, cases, loss=ce_class)   # net outputs ProbMap, not Scores",
        "fit = train(net, cases, loss=dice_ce)",
    ),
    "E0220": Code(
        "linear interpolation of a label map",
        "Interpolating labels linearly creates values between classes (2.5 between kidney"
        " and spleen) and blurs boundaries. Label maps are resampled with nearest neighbour;"
        " `interp=auto` does this for labels and uses linear for images.",
        "x = cases |> resample(spacing=(1, 1, 1) mm, interp=linear)",
        "x = cases |> resample(spacing=(1, 1, 1) mm)",
    ),
    "E0230": Code(
        "size not divisible by the network's down-sampling",
        "A U-Net or V-Net halves the size at each level; a patch or window whose size is"
        " not a multiple of the total factor cannot be reassembled and fails at run time,"
        " often after hours of pre-processing.",
        "net = vnet(classes=2)\npred = infer(fit, images, window=(96, 96, 40))",
        "pred = infer(fit, images, window=(96, 96, 48))",
    ),
    "E0240": Code(
        "file pattern without `*`",
        "A dataset reader pairs files by the part of their names that `*` matches: the case"
        " identifier. A pattern without `*` names a single file. Several `*` in one pattern"
        " must all match the same identifier.",
        "cases = folder(\"data\", image=\"ct.nii.gz\", label=\"seg.nii.gz\")",
        "cases = folder(\"data\", image=\"*_ct.nii.gz\", label=\"*_seg.nii.gz\")",
    ),
    "E0241": Code(
        "value out of range",
        "Sizes, spacings, window widths and counts must be above zero; probabilities and"
        " proportions lie between 0 and 1; some values have their own range, which the"
        " message gives (`take(n=...)` at least 0, percentiles between 0 and 100, at most"
        " 10000 `phantom` cases).",
        "x = ct |> resample(spacing=(1, 0, 1) mm)",
        "x = ct |> resample(spacing=(1, 1, 1) mm)",
    ),
    "E0242": Code(
        "number too large",
        "A number literal (in the file or in a `--set` value) is beyond ±2^53 (about"
        " 9.007e15), or so large that it is infinite (`1e999`). No size, count or"
        " intensity a pipeline uses comes near it, and such a value would only make a run"
        " allocate or loop without limit. It is refused before anything runs.",
        "x = ct |> window(level=1e999, width=400)",
        "x = ct |> window(level=40, width=400)",
    ),
    "E0243": Code(
        "not an axis",
        "An operator that works along one axis (`flip`) was given an axis the data does not"
        " have. Axes are numbered from 0: 0, 1 (and 2 for 3-D data), in (x, y, z) order.",
        "x = ct |> flip(axis=3, p=0.5)",
        "x = ct |> flip(axis=2, p=0.5)",
    ),
    "E0244": Code(
        "lower bound above the upper bound",
        "Two values that bound a range (`clip(low=..., high=...)`, the percentiles of"
        " `percentile_rescale`, the thresholds of `threshold_mask`) are given the wrong way"
        " round: the lower one is above the upper one.",
        "x = ct |> clip(low=100, high=-100)",
        "x = ct |> clip(low=-100, high=100)",
    ),
    "E0245": Code(
        "label value not in the label map",
        "A label map with K classes holds the values 0 .. K-1, so selecting a value of K or"
        " more (or below 0) selects nothing: every voxel of the result would be"
        " background. Either the value is wrong, or the map has more classes than"
        " declared: declare them (`as LabelMap[3, 118]`).",
        "seg = nifti(\"seg.nii.gz\") as LabelMap[3, 2]\nliver = seg |> select_labels(labels=(9,))",
        "seg = nifti(\"seg.nii.gz\") as LabelMap[3, 10]\nliver = seg |> select_labels(labels=(9,))",
    ),
    "E0246": Code(
        "input too small for the network",
        "A size divisible by the network's down-sampling factor but equal to it on every"
        " axis leaves a single voxel at the network's deepest level: its normalization has"
        " nothing to normalize and training fails (MONAI's U-Net: \"Expected more than 1"
        " spatial element\"). Use larger patches or crops on at least one axis, or a network"
        " that down-samples fewer times.",
        "fit = train(unet3d(), cases |> crop_or_pad((16, 16, 16)), loss=dice_ce)",
        "fit = train(unet3d(), cases |> crop_or_pad((32, 32, 32)), loss=dice_ce)",
    ),
    "E0247": Code(
        "size too large",
        "A size in voxels (of `crop_or_pad`, `resize`, `phantom`, patches...) multiplies"
        " out to more than 2^34 voxels (64 GiB as float32). Sizes are in voxels, not in"
        " millimetres; to cover a large region, resample to a coarser spacing first or take"
        " patches.",
        "x = ct |> crop_or_pad((100000, 100000, 100))",
        "x = ct |> crop_or_pad((512, 512, 100))",
    ),
    "E0248": Code(
        "impossible number in a type",
        "A number written in a type cannot describe data: a dimensionality other than 2 or"
        " 3, fewer than 2 classes (the background counts), no channels, a shape with an"
        " axis of 0 voxels, a negative tuple length.",
        "labels = nifti(\"seg.nii.gz\") as LabelMap[3, 0]",
        "labels = nifti(\"seg.nii.gz\") as LabelMap[3, 2]",
    ),
    "E0249": Code(
        "empty path",
        "A file or folder parameter is empty (often a `--set root=` with nothing after the"
        " `=`), or a writer's path names a folder (`.`, `/`) where it needs a file name.",
        'report write_nifti(ct, "")',
        'report write_nifti(ct, "ct_out.nii.gz")',
    ),
    "E0250": Code(
        "values on different voxel grids",
        "Metrics, overlays and masks compare values voxel by voxel, which only means"
        " something when both lie on one grid (spacing, origin, direction, size). A"
        " prediction made on resampled or cropped images is on another grid than the labels"
        " as read from disk; comparing them would run and give a wrong number. `resample_to`"
        " brings a value onto a reference image's grid (label maps with nearest neighbour).",
        "pred = infer(fit, cases.image |> resample(spacing=(1, 1, 1) mm)) |> argmax\n"
        "score = dice(pred, cases.label) maximize",
        "pred = infer(fit, cases.image |> resample(spacing=(1, 1, 1) mm)) |> argmax |> resample_to(cases.image)\n"
        "score = dice(pred, cases.label) maximize",
    ),
    "E0260": Code(
        "a dataset writer writes every case to one file",
        "A writer given a dataset writes one file per case: its path is a pattern whose `*`"
        " becomes each case's id. A path without `*` names a single file, so every case would"
        " overwrite the one before and only the last would remain.",
        'cases = folder("data", image="*_ct.nii.gz") as Dataset<Image[3, CT]>\n'
        'written = write_nifti(cases, "all.nii.gz")',
        'cases = folder("data", image="*_ct.nii.gz") as Dataset<Image[3, CT]>\n'
        'written = write_nifti(cases, "ct/*.nii.gz")',
    ),
    "E0261": Code(
        "two writers write the same file",
        "Two writers (or reports) of a pipeline name the same file, after the format's"
        " extension is added (`scores` and `scores.csv` are one file for `csv`). Whichever"
        " ran last would win, and which one that is changes from run to run. Give each its own"
        " path.",
        'a = write_nifti(cases.image, "out/*.nii.gz")\nb = write_nifti(cases.label, "out/*.nii.gz")',
        'a = write_nifti(cases.image, "out/*_ct.nii.gz")\nb = write_nifti(cases.label, "out/*_seg.nii.gz")',
    ),
    "E0301": Code(
        "objective is not a metric",
        "`maximize` and `minimize` mark a metric as the objective of tuning; other values"
        " cannot be objectives.",
        "pred = infer(fit, images) maximize",
    ),
    "E0302": Code(
        "objective direction contradicts the metric",
        "Dice, IoU, accuracy are better when higher; HD95 and ASSD are distances and better"
        " when lower. Maximizing a distance would select the worst model.",
        "score = hd95(pred, labels) maximize",
        "score = hd95(pred, labels) minimize",
    ),
    "E0303": Code(
        "more than one objective",
        "`maximize`/`minimize` marks the one metric that tuning optimizes and that selects"
        " the best model. Other metrics are reported, not optimized.",
        "score = dice(pred, labels) maximize\ndistance = hd95(pred, labels) minimize",
        "score = dice(pred, labels) maximize\ndistance = hd95(pred, labels)\nreport excel(\"scores.xlsx\", (score, distance))",
    ),
    "E0401": Code(
        "cycle",
        "A value depends on itself, directly or through other values (or a transform uses"
        " itself). A pipeline is a graph without cycles.",
        "a = b |> rescale(0, 1)\nb = a |> zscore",
    ),
    "E0501": Code(
        "invalid search space",
        "A search space whose bounds cannot work: low not below high, `loguniform` through"
        " zero or below, a `quniform` step that is zero or larger than the range, `int`"
        " bounds that are not whole numbers, a `choice` with fewer than two options.",
        "param lr = 1e-3 search loguniform(0, 1e-2)",
        "param lr = 1e-3 search loguniform(1e-5, 1e-2)",
    ),
    "E0502": Code(
        "default outside the search space",
        "A parameter's default is the value of a plain run and the first trial of a search;"
        " it must lie inside its own search space.",
        "param lr = 0.1 search loguniform(1e-4, 1e-2)",
        "param lr = 1e-3 search loguniform(1e-4, 1e-2)",
    ),
    "E0503": Code(
        "unknown search space",
        "The search spaces are uniform(lo, hi), loguniform(lo, hi), quniform(lo, hi, step),"
        " int(lo, hi) and choice(a, b, ...).",
        "param lr = 1e-3 search log_uniform(1e-4, 1e-2)",
        "param lr = 1e-3 search loguniform(1e-4, 1e-2)",
    ),
    "E0504": Code(
        "search space of the wrong type",
        "A numeric search space for a parameter that is not a number, or a `choice` whose"
        " options are not all of the parameter's type (a metric among losses).",
        "param loss_fn = dice_ce search choice(dice_ce, dice)",
        "param loss_fn = dice_ce search choice(dice_ce, dice_loss)",
    ),
    "E0530": Code(
        "values of two different cross-validations meet",
        "A value made per fold of one `kfold` (`folds_a.train`, a model trained on it, its"
        " predictions) is combined with a value per fold of another `kfold`. The operator is"
        " applied fold by fold, and fold i of one partition has nothing to do with fold i of"
        " the other: a model would be scored on cases it was trained on, or on another"
        " partition's validation cases. Make both values from the same `kfold`.",
        "folds_a = kfold(cases, k=3, seed=1)\nfolds_b = kfold(cases, k=3, seed=2)\n"
        "fits = train(net, folds_a.train, loss=dice_ce)\npred = infer(fits, folds_b.val.image) |> argmax",
        "folds = kfold(cases, k=3, seed=1)\n"
        "fits = train(net, folds.train, loss=dice_ce)\npred = infer(fits, folds.val.image) |> argmax",
    ),
    "E0531": Code(
        "the number of folds is not known before running",
        "Using every fold of a `kfold` (`folds.train`, `folds.val`) writes the pipeline out"
        " once per fold before anything runs, so `k` must be a known number between 1 and 100:"
        " a literal, or a parameter that is not searched (its `--set` value counts). A"
        " searched `k` would change the folds themselves from trial to trial, so no trial"
        " could be compared with another; cross-validate with one `k`.",
        "param k = 5 search int(3, 10)\nfolds = kfold(cases, k=k)\nfits = train(net, folds.train, loss=dice_ce)",
        "folds = kfold(cases, k=5)\nfits = train(net, folds.train, loss=dice_ce)",
    ),
    "E0601": Code(
        "unknown resource",
        "`resources` takes gpus, cpus, workers, memory and gpu_memory.",
        "resources gpu=1",
        "resources gpus=1",
    ),
    "E1001": Code(
        "file or folder not found",
        'A file the pipeline reads does not exist (or is a folder where a file is expected). The message names the nearest folder that does exist, so a typo in the path is easy to see.',
    ),
    "E1002": Code(
        "unreadable, corrupt or truncated image",
        'The file cannot be read as the format its operator expects, or it holds less voxel data than its header promises (an interrupted copy or download). SimpleITK itself would read a truncated NIfTI silently, filling the missing part with zeros; medasl checks the size. Copy the file again.',
    ),
    "E1003": Code(
        "not a DICOM image",
        'A file passed as DICOM is not one, or is a DICOM object without pixel data (a DICOMDIR, a report), or a folder holds no DICOM series, or none with the `uid=` given.',
    ),
    "E1004": Code(
        "several DICOM series in one folder",
        'A folder holds more than one series (a scout and an axial series, several reconstructions). The message lists each SeriesInstanceUID with its description and number of slices; choose one with `dicom_series(folder, uid="...")`.',
    ),
    "E1005": Code(
        "nothing found",
        'The folder is empty, or the file pattern matched no file.',
    ),
    "E1006": Code(
        "unpaired images and labels",
        'Images and labels are paired by the part of their names that `*` matches. The listed images have no label with the same identifier, or the labels no image: a missing file or a naming mismatch.',
    ),
    "E1007": Code(
        "image and label grids disagree",
        'An image and its label have a different size, spacing, origin or direction (the values are in the message). A label that is only stored with flipped or permuted axes is realigned exactly; anything else must be fixed at the source or resampled explicitly.',
    ),
    "E1008": Code(
        "NaN or infinite values",
        'The image holds non-finite values (their count and the first voxel are in the message). SimpleITK would silently turn them into 0 when reading NIfTI; medasl refuses them.',
    ),
    "E1009": Code(
        "not a label map",
        'A file read as labels holds fractional values or channels that differ: a probability map or a colour picture was given where a label map is expected.',
    ),
    "E1010": Code(
        "uneven or non-parallel DICOM slices",
        'The slices of a series are unevenly spaced (a missing or repeated slice), not parallel (mixed orientations) or shifted sideways (gantry tilt). A volume built from them would put voxels at wrong positions, so medasl stops instead of reading it with wrong geometry.',
    ),
    "E1011": Code(
        "a split part would be empty",
        'A split would leave one of its parts with no cases. `split` gives test floor(test x n) cases and val the cases up to floor((test + val) x n); train gets the rest, so `val=0.2` with 3 cases leaves val empty. `kfold` needs 1 <= k <= the number of cases (k=1 trains and validates on all of them). With `stratify=true` the rounding happens within each class. Use more cases, a larger fraction or a smaller `k`, or set the fraction to 0 when the part is not wanted.',
    ),
    "E1012": Code(
        "a case id occurs more than once",
        'Case ids name cases in splits, written files and diagnostics, so they must be unique within a dataset; otherwise one case could land in both train and test. Usually a file pattern matched the same case twice (`.nii` and `.nii.gz` copies), or `concat` joined datasets that share cases.',
    ),
    "E1013": Code(
        "datasets with different cases",
        'An operator applied case by case to two datasets pairs their cases by id (a prediction with its reference, an image with its mask). The message lists the ids found in one dataset and not in the other: usually the two come from different folders or different parts of a split.',
    ),
    "E1040": Code(
        "label values outside the declared classes",
        "A file declared `LabelMap[D, K]` holds values outside 0..K-1 (or a class label outside"
        " 0..K-1 of a declared `Class[K]`); the message names the file and the values found."
        " A binary mask saved as 0/255 is the usual cause: read as two classes it would make"
        " 256 one-hot channels and a Dice of 0. Declare as many classes as the largest value"
        " needs and keep the values the study needs with `select_labels`, which numbers them"
        " 1, 2, ...",
        'import std.io\npipeline p {\n  mask = png("mask.png") as LabelMap[2, 2]\n}',
        'import std.io, std.pre\npipeline p {\n  mask = png("mask.png") as LabelMap[2, 256] |> select_labels(labels=(255,))\n}',
    ),
    "E1041": Code(
        "the file has another dimension than declared",
        "A file declared 3-D holds a 2-D image (a NIfTI file of one slice with two axes, a"
        " PNG, a single-frame DICOM radiograph), or the other way round; operators and"
        " networks written for 3-D volumes would fail on it. A 3-D file one slice thick"
        " declared 2-D is read as that slice. Declare the dimension the file has.",
        'import std.io\npipeline p {\n  xray = dicom_file("chest.dcm") as Image[3, XR]\n}',
        'import std.io\npipeline p {\n  xray = dicom_file("chest.dcm") as Image[2, XR]\n}',
    ),
    "E1042": Code(
        "a DICOM segmentation that is not a label map",
        "`dicom_seg` (and `dicom_file` given a SEG) makes one label map from the segments"
        " of a DICOM SEG: segment n becomes the label value n. It cannot when the file is not"
        " a SEG, when the SEG is FRACTIONAL (a probability per segment), when segments"
        " overlap (a voxel would need two values) or when its frames do not lie on a"
        " regular grid. Export the segmentation as a BINARY or LABELMAP SEG without"
        " overlaps, or read a non-overlapping subset where it was made.",
        'import std.io\npipeline p {\n  seg = dicom_seg("ct_slice_001.dcm") as LabelMap[3, 3]\n}',
        'import std.io\npipeline p {\n  seg = dicom_seg("liver_seg.dcm") as LabelMap[3, 3]\n}',
    ),
    "E1030": Code(
        "data of the wrong dimensionality",
        "An operator met data of a dimensionality it cannot take, which the checker could"
        " not see because the data was read without a declared one (`nifti(...)` without"
        " `as Image[2, ...]`): `write_png` given a 3-D volume. Declare the dimensionality"
        " where the data is read, so that `medasc check` reports it (E0204), or use an"
        " operator made for the data (`write_nifti` for volumes).",
    ),
    "E1031": Code(
        "values a file format cannot hold",
        "A writer was given values its format cannot store: a PNG holds label values 0 to"
        " 65535 only. Write such label maps with `write_nifti`.",
    ),
    "E1043": Code(
        "an array stack that does not fit",
        "A NumPy file or stack does not hold what the reader was told: an .npz has no array"
        " of the name given (the message lists the names it has), an .npz of several arrays"
        " was read with `numpy` without `key=`, or the image and label stacks of"
        " `stacked_classified`/`stacked_labels` disagree (another number of entries, label"
        " maps of another size, classes that are not one integer per image).",
        'import std.io\npipeline p {\n  cases = stacked_classified("pneumoniamnist.npz")\n}',
        'import std.io\npipeline p {\n  cases = stacked_classified("pneumoniamnist.npz", images="val_images", labels="val_labels")\n}',
    ),
    "E1044": Code(
        "object masks overlap",
        "`mask_folder` builds an instance map from one mask file per object, and an instance"
        " map gives each pixel one object; two of the masks claim the same pixels (the"
        " message names them and how many pixels). The original Data Science Bowl 2018"
        " masks have a few such overlaps; the community-corrected set has none. Fix or"
        " remove the duplicate mask.",
        'import std.io\npipeline p {\n  nuclei = mask_folder("stage1_train", image="*/images/*.png", masks="*/masks")\n}',
        'import std.io\npipeline p {\n  nuclei = mask_folder("stage1_train_fixed", image="*/images/*.png", masks="*/masks")\n}',
    ),
    "E1032": Code(
        "cannot read a file or folder",
        "A file or folder the pipeline names exists but cannot be read: no permission, or a"
        " folder (given where a file is expected, or as a dataset's root) with parts that"
        " cannot be listed, such as `/`. The message names the path that failed.",
    ),
    "E2001": Code(
        "operator not implemented yet",
        'The pipeline is valid medas, but this version of medasl has no implementation of an operator it uses, so it cannot be run (it can still be checked and drawn). The README lists what is implemented; nothing is run when this is reported.',
    ),
    "E2002": Code(
        "out of memory",
        'An operator ran out of memory on one case. Every result computed before it is kept in the cache, so a rerun resumes there. Use fewer workers (`--workers 1`), smaller patches or crops, or a coarser resampling.',
    ),
    "E2003": Code(
        "device not available",
        '`--device cuda:N` asks for a GPU that this machine does not have, or PyTorch is not installed with CUDA support. `--device cpu` always works.',
    ),
    "E2004": Code(
        "a cached result vanished during the run",
        'A result this run had found in the cache, or had just computed, was gone when a later step needed it: the cache was cleaned (`medasc cache gc --all`) or its files were removed while the run went on. Run the same command again; whatever is missing is computed again.',
    ),
    "E2005": Code(
        "the training loss is not a number",
        'The loss became NaN or infinite during training: usually a learning rate that is too high, intensities that were not normalized (raw CT values in the thousands), or a label map with an unexpected value. Training stops; every finished epoch is kept in the cache, so after the fix a rerun with the same settings continues from the last good epoch.',
    ),
    "E2006": Code(
        "labels the network cannot predict",
        'A label map (or class) holds a value at or above the number of classes the network predicts, e.g. the value 2 (tumour) in LiTS labels given to a two-class network. Give the network as many classes as the labels have (`classes=3`), or merge label values before training.',
    ),
    "E2007": Code(
        "cases of different sizes in one batch",
        'A batch stacks cases into one tensor, so they must have one size. Make every case the same size before training (`crop_or_pad((128, 128, 96))` or `patches(...)`), or train with `batch=1`.',
    ),
    "E2008": Code(
        "size not divisible by the network's down-sampling",
        'A window or patch size given on the command line (`--set patch=(64, 64, 30)`), or a training case whose size came out so, is not a multiple of the factor by which the network halves the image (16 for a U-Net with four strides). `medasc check` reports the same for sizes written in the file (E0230); this is the check of the value the run actually uses.',
    ),
    "E2010": Code(
        "the disk is full",
        "Writing a file under `--out` failed because the disk (or your quota) is full. Every"
        " file is written under a temporary name beside its target and renamed into place only"
        " when complete, so no partial or empty file was left, and nothing finished is lost:"
        " cached results and the files written before stay. Free some space (`medasc cache gc`"
        " removes what killed runs left in the cache) or choose another `--out`, and run the"
        " same command again; the file is written again.",
    ),
    "E2011": Code(
        "writing outside the output folder",
        "Writers and reports write only inside `--out DIR/<pipeline>` (the output-path rule):"
        " a path with `..` that climbs out of it, an absolute path elsewhere, or a folder in it"
        " that is a symbolic link pointing outside is refused before anything runs. Case ids"
        " that fill a pattern's `*` are made into plain file names, so data cannot choose a"
        " path. To write elsewhere on purpose, pass `--allow-outside-out` to `medasc run`.",
        'written = write_nifti(cases.image, "../shared/*.nii.gz")',
        'written = write_nifti(cases.image, "shared/*.nii.gz")',
    ),
    "E2012": Code(
        "two outputs would write the same file",
        "Two outputs of a run would land on one file: two case ids that become the same file"
        " name (`a/b` and `a_b` both give `a_b`), a dataset writer whose path has no `*` (from"
        " `--set`), or two writers given one path. The run stops before overwriting anything;"
        " `medasc check` reports the cases it can see in the file (E0260, E0261).",
        'written = write_nifti(cases.image, "all.nii.gz")',
        'written = write_nifti(cases.image, "*.nii.gz")',
    ),
    "E2013": Code(
        "an output file cannot be written",
        "Writing a file under `--out` failed for a reason other than a full disk: the folder"
        " is read-only or not yours, a folder stands where the file should be, or the writing"
        " library wrote an incomplete file. Nothing half-written was left; fix the folder (or"
        " choose another `--out`) and run the same command again.",
    ),
    "E2020": Code(
        "the cache cannot be written",
        "A run stores every result in its cache (`--cache-dir DIR`, else `$MEDASL_CACHE_DIR`,"
        " else `~/.cache/medasl`) before the next step reads it, and this cache is on a"
        " read-only file system or in a folder you may not write to. Nothing was half-written."
        " Give a writable cache with `--cache-dir DIR` (or `MEDASL_CACHE_DIR=DIR`). A read-only"
        " cache still serves a run whose results it holds already: only computing needs to write.",
        'import std.io, std.pre\npipeline p {\n  ct = nifti("ct.nii.gz") as Image[3, CT]\n'
        '  smooth = ct |> resample(spacing=(2, 2, 2) mm)\n}',
    ),
    "E2021": Code(
        "no space left for the cache",
        "Storing a result in the cache failed because the disk (or your quota) is full. A"
        " result is written under a temporary name and appears only when complete, so the"
        " unfinished one was removed and no later run can take it for a result; everything"
        " stored before stays. `medasc cache du` shows what the cache holds, `medasc cache gc"
        " --older-than 7d` removes older results, or `--cache-dir DIR` puts the cache on a"
        " larger disk; then the same command resumes.",
        'import std.io, std.pre\npipeline p {\n  ct = nifti("ct.nii.gz") as Image[3, CT]\n'
        '  fine = ct |> resample(spacing=(0.2, 0.2, 0.2) mm)\n}',
    ),
    "E2080": Code(
        "these models cannot be ensembled",
        "`ensemble` averages the class probabilities of the fold models (segmentation networks"
        " and classifiers). A detector gives boxes, which are not averaged this way, and an"
        " ensemble needs at least one model. Infer with each fold's detector and merge the"
        " boxes (`nms`) instead.",
    ),
    "E2081": Code(
        "a cross-validated metric without folds",
        "`cross_validated` summarizes the metric of every fold (their mean and spread) and was"
        " given no metric. The checker writes it with one metric per fold; when writing it by"
        " hand, give it a tuple of the folds' metrics in fold order.",
    ),
    "W0010": Code(
        "a writer's path leaves the output folder",
        "Writers and reports write inside `--out DIR/<pipeline>` (the output-path rule): an"
        " absolute path, or one whose `..` climbs out of that folder, is refused by `medasc run`"
        " (E2011) unless the run is given `--allow-outside-out`. Only the run decides, so the"
        " checker warns. Write a relative path without `..`, or pass the option on purpose.",
        'written = write_nifti(cases.image, "/data/derived/*.nii.gz")',
        'written = write_nifti(cases.image, "derived/*.nii.gz")',
    ),
    "W0001": Code(
        "unused value",
        "A binding that nothing uses, shows or reports is computed for nothing.",
        "pipeline p {\n  ct = nifti(\"ct.nii.gz\")\n}",
    ),
    "W0002": Code("unused parameter", "A parameter that no value uses has no effect, even when searched."),
    "W0003": Code("unused transform", "A transform that is never applied is never checked against data."),
    "W0004": Code("unused import", "A standard module is imported but none of its operators is used."),
    "W0005": Code(
        "real-valued search for a whole number",
        "`uniform`, `loguniform` and `quniform` draw real numbers; a whole-number parameter"
        " such as `epochs` is searched with `int(lo, hi)`.",
        "param epochs = 50 search uniform(10, 100)",
        "param epochs = 50 search int(10, 100)",
    ),
    "E2060": Code(
        "a trial gave no objective",
        "A trial of `medasc tune` ran, but the objective (the metric marked `maximize` or"
        " `minimize`) came out NaN: no case gave a number, for example a Dice over cases whose"
        " reference and prediction are both empty, or a training that learned nothing for these"
        " values. The trial is recorded as failed with this code and the search goes on;"
        " hyperopt counts it as the worst result. If many trials fail so, check the metric on a"
        " plain run (`medasc run`) and the range searched.",
        'import std.io, std.nets, std.losses, std.train, std.metrics, std.post\npipeline p {\n'
        '  param lr = 1e-2 search loguniform(1e-3, 10.0)\n  cases = phantom(cases=4)\n'
        '  fit = train(unet3d(), cases, loss=dice_ce, optimizer=adam(lr=lr), epochs=1)\n'
        '  score = dice(infer(fit, cases.image) |> argmax, cases.label) maximize\n}',
        'import std.io, std.nets, std.losses, std.train, std.metrics, std.post\npipeline p {\n'
        '  param lr = 1e-2 search loguniform(1e-4, 1e-1)\n  cases = phantom(cases=4)\n'
        '  fit = train(unet3d(), cases, loss=dice_ce, optimizer=adam(lr=lr), epochs=1)\n'
        '  score = dice(infer(fit, cases.image) |> argmax, cases.label) maximize\n}',
    ),
    "E2061": Code(
        "the study in --out was made with other settings",
        "`medasc tune` keeps its study in `<out>/<pipeline>/study.json` and running the same"
        " command again continues it. This command differs from the one that started it: another"
        " algorithm, seed, batch, fixed `--set` value, or another search space (a `search` clause"
        " edited). Mixing them would make a study whose proposals no command reproduces. Give"
        " another `--out` for a new study (the cache still gives back every result computed"
        " before), or run the study with the settings the message lists.",
        "param lr = 1e-3 search loguniform(1e-4, 1e-2)   # the study was started with this space\n"
        "param lr = 1e-3 search loguniform(1e-5, 1e-1)   # and continued with this one",
        "param lr = 1e-3 search loguniform(1e-4, 1e-2)",
    ),
    "E2062": Code(
        "nothing to optimize",
        "`medasc tune` searches for the parameter values that give the best objective, and the"
        " pipeline has none: mark one metric binding with `maximize` (Dice, AUC, accuracy) or"
        " `minimize` (HD95, surface distance).",
        "score = dice(pred, folds.val.label)",
        "score = dice(pred, folds.val.label) maximize",
    ),
    "E2063": Code(
        "nothing to search",
        "`medasc tune` searches the parameters declared with a `search` clause, and the pipeline"
        " has none (or every one is fixed by `--set`, which takes it out of the search).",
        "param lr = 1e-3",
        "param lr = 1e-3 search loguniform(1e-4, 1e-2)",
    ),
    "E2064": Code(
        "the study file cannot be read",
        "`<out>/<pipeline>/study.json` is not a study `medasc tune` wrote: it was edited by hand,"
        " replaced, or comes from another version of medasl. It is never half-written by a killed"
        " study (it is replaced whole by a rename). Move it away, or give another `--out`, to"
        " start a new study; the cache keeps every result, so the trials that finished before"
        " are not computed again.",
    ),
    "W0030": Code(
        "the file changed since the study started",
        "`medasc tune` continues the study in `--out`, whose search space and settings are those"
        " of this command, but the `.medas` file is not the one the finished trials ran: a step"
        " was edited. The study goes on, and its earlier trials keep the results of the earlier"
        " version. When the change matters, give another `--out` to start a new study.",
    ),
    "W0015": Code(
        "a damaged cached result is computed again",
        "Every file of a cached result has its sha256 recorded when the result is stored, and"
        " its manifest the sha256 of its own text; a run compares them (each file once per"
        " run) before it uses the result. This one did not match: a file was changed, cut"
        " short or replaced after it was stored (a disk error, a copy that went wrong, an edit"
        " by hand). The run did not use it: it computed the result again, so its outputs are"
        " those of a clean run. `medasc cache verify` checks the whole cache; with `--drop` it"
        " removes what is damaged.",
        'import std.io, std.pre\npipeline p {\n  ct = nifti("ct.nii.gz") as Image[3, CT]\n'
        '  smooth = ct |> resample(spacing=(2, 2, 2) mm)\n}',
    ),
}


def explain(code: str) -> str | None:
    entry = CODES.get(code.upper())
    if entry is None:
        return None
    lines = [f"{code.upper()}: {entry.title}", "", entry.explanation]
    if entry.example:
        lines += ["", "For example:", "", *("    " + ln for ln in entry.example.splitlines())]
    if entry.fix:
        lines += ["", "Fixed:", "", *("    " + ln for ln in entry.fix.splitlines())]
    return "\n".join(lines)
