-- Runs once, when the PostgreSQL volume is first created. genart's prediction store lives in POSTGRES_DB
-- (genart); MLflow gets its own database: both keep an `alembic_version` table, so they must never share one.
CREATE DATABASE mlflow;
