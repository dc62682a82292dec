"""The paper's baselines (Section 4.4): SPADE and a VAE, with PaDiM's fit/predict/Prediction API."""
