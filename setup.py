from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "neonet_toolkit" / "version.py").read_text(), version)

setup(
    name="neonet_toolkit",
    version=version["__version__"],
    description="nnU-Net-style self-configuring toolkit for perineural invasion (PNI) prediction from 3D MRI",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["neonet_toolkit", "neonet_toolkit.*"]),
    include_package_data=True,
    install_requires=[
        # torch and torchvision must be a matching pair; timm (imported by nnU-Net's trainer
        # lookup through dynamic-network-architectures) needs an importable torchvision.
        "torch>=2.4",
        "torchvision",
        "nnunetv2>=2.6",
        "batchgenerators>=0.25",
        "acvl-utils",
        "SimpleITK>=2.2",
        "nibabel>=5",
        "monai>=1.4",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "numpy>=1.24",
        "tqdm",
        "matplotlib>=3.7",
        # --dicom-out (DICOM SEG + Comprehensive 3D SR) and the demo's DICOM series
        "highdicom>=0.25",
        "pydicom>=3",
        # neonet_validate: calibration (GLM, lowess, Wilson intervals) and decision curves
        "statsmodels>=0.14.5",
        "dcurves>=1.1.7",
        "pandas>=2.2",
        # neonet_experiment --launcher slurm; submitit's job entry imports pkg_resources, gone from setuptools 82
        "submitit>=1.5.3",
        "setuptools>=77.0.3,<82",
    ],
    extras_require={
        "test": ["pytest>=7", "lpips==0.1.4"],
        "lpips": ["lpips==0.1.4"],
        "radiomics": ["pyradiomics==3.0.1"],
    },
    entry_points={
        "console_scripts": [
            "neonet_plan_and_preprocess=neonet_toolkit.run.plan_and_preprocess:main",
            "neonet_make_demo_dataset=neonet_toolkit.run.make_demo_dataset:main",
            "neonet_train=neonet_toolkit.run.train:main",
            "neonet_evaluate=neonet_toolkit.run.evaluate:main",
            "neonet_find_best_configuration=neonet_toolkit.run.find_best_configuration:main",
            "neonet_generate=neonet_toolkit.run.generate:main",
            "neonet_experiment=neonet_toolkit.run.experiment:main",
            "neonet_predict=neonet_toolkit.run.predict:main",
            "neonet_export_model=neonet_toolkit.run.export_model:main",
            "neonet_install_model=neonet_toolkit.run.install_model:main",
            "neonet_validate=neonet_toolkit.run.validate:main",
            "neonet_demo=neonet_toolkit.run.demo:main",
        ],
    },
)
