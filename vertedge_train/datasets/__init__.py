"""Training data from outside: public spine datasets and a site's corrected scans, in the VerSe layout.

- `download`: resumable, checked downloads of VerSe 2019/2020, CTSpine1K and TotalSegmentator;
- `layouts`: one reader per dataset layout, writing `DIR/rawdata/sub-*/..._ct.nii.gz` +
  `DIR/derivatives/sub-*/..._seg-subreg_ctd.json` (what `vertedge_train.data.find_verse_cases` reads);
- `body`: vertebral-body centroids from whole-vertebra masks;
- `corrections`: a CT and its 3D Slicer markups (as `vertedge run` writes them, after a reader's edits)
  as one case;
- `cli`: the `vertedge-train data` command.

numpy and SimpleITK only (no torch).
"""
