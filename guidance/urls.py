"""URLs of the guidance pages: the index and one page per parameter."""
from django.urls import path

from guidance import views

urlpatterns = [
    path("guidance/", views.guidance_index, name="guidance_index"),
    path("guidance/<str:param>/", views.guidance_param, name="guidance_param"),
]
