"""Python client for xaas, the explanation-as-a-service for image CNNs.

>>> from xaas_client import Client
>>> with Client("http://127.0.0.1:8000") as xaas:
...     explanation = xaas.explain("gradcam", "cat.png").explanations[0]
...     explanation.heatmap_image().save("cat.heatmap.png")
"""

from ._core import DicomwebResult
from .client import DEFAULT_URL, AsyncClient, AsyncJobHandle, Client, JobHandle, __version__
from .errors import (
    APIError,
    BadRequest,
    ClientError,
    Forbidden,
    InvalidInput,
    JobCancelled,
    JobError,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    UnsupportedMediaType,
    XaasConnectionError,
    XaasError,
)
from .images import ImageInput, encode_image
from .retry import RetryPolicy, parse_retry_after
from .types import (
    ActivationResponse,
    Box,
    ChannelStats,
    ExplainedDetection,
    ExplainResponse,
    Explanation,
    FilterResponse,
    GridInfo,
    Health,
    ImageInfo,
    Job,
    JobProgress,
    LayerChoice,
    LocalizeResponse,
    MaskBox,
    MethodInfo,
    MethodParam,
    MethodTrustInfo,
    ModelDetail,
    ModelInfo,
    Prediction,
    PredictResponse,
    RawMap,
    Readiness,
)

__all__ = [
    "DicomwebResult",
    "AsyncJobHandle", "JobHandle",
    "ActivationResponse", "ChannelStats", "FilterResponse", "GridInfo", "Job", "JobCancelled", "JobError",
    "JobFailed", "JobProgress", "JobTimeout",
    "APIError", "AsyncClient", "BadRequest", "Box", "Client", "ClientError", "DEFAULT_URL", "ExplainResponse",
    "ExplainedDetection", "Explanation", "Forbidden", "Health", "ImageInfo", "ImageInput", "InvalidInput",
    "LayerChoice", "LocalizeResponse", "MaskBox",
    "MethodInfo", "MethodParam", "MethodTrustInfo", "ModelDetail", "ModelInfo", "NotFound", "PayloadTooLarge",
    "Prediction", "PredictResponse",
    "RateLimited", "RawMap", "Readiness", "RetryPolicy", "ServerError", "Timeout", "Unauthorized", "Unavailable",
    "UnexpectedResponse", "UnsupportedMediaType", "XaasConnectionError", "XaasError", "__version__", "encode_image",
    "parse_retry_after",
]
