-- MLflow keeps its own database beside the leaderboard's.
CREATE DATABASE mlflow;
