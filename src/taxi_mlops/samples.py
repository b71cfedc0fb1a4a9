"""Sample trips shown by `taxi-mlops predict` and stored as the MLflow Model's input example.

Pure data (no imports): the TFX environment, which logs the MLflow Model, reads it too.
"""

SAMPLE_TRIPS = [
    {"trip_id": "sample-card-loop", "trip_miles": 1.1, "fare": 6.25, "trip_seconds": 420,
     "trip_start_hour": 9, "trip_start_day": 3, "trip_start_month": 6, "pickup_community_area": 8,
     "dropoff_community_area": 32, "payment_type": "Credit Card", "company": "Taxi Affiliation Services"},
    {"trip_id": "sample-cash-airport", "trip_miles": 17.4, "fare": 44.75, "trip_seconds": 2100,
     "trip_start_hour": 17, "trip_start_day": 6, "trip_start_month": 10, "pickup_community_area": 76,
     "dropoff_community_area": 8, "payment_type": "Cash", "company": "Dispatch Taxi Affiliation"},
    {"trip_id": "sample-card-night", "trip_miles": 4.6, "fare": 15.5, "trip_seconds": 960,
     "trip_start_hour": 23, "trip_start_day": 7, "trip_start_month": 12, "pickup_community_area": 32,
     "dropoff_community_area": 6, "payment_type": "Credit Card", "company": "Flash Cab"},
    {"trip_id": "sample-unseen-company", "trip_miles": 2.0, "fare": 8.0, "trip_seconds": 540,
     "trip_start_hour": 12, "trip_start_day": 2, "trip_start_month": 3, "pickup_community_area": 28,
     "payment_type": "Credit Card", "company": "A Company Never Seen"},
]
