"""Ray's own Triton example ("Serving models with Triton Server in Ray Serve", docs.ray.io, from Triton's
tutorials: Triton_Inference_Server_Python_API/examples/rayserve/tritonserver_deployment.py) with its import of
``tritonserver`` redirected to tritium, and a CPU stand-in for its model repository.

The deployment below is the example's code as the page shows it; only these lines differ:

* ``import tritium.tritonserver as tritonserver`` (the example: ``import tritonserver``);
* ``ray_actor_options={"num_cpus": 0}`` (the example asks for ``{"num_gpus": 1}``: there is no GPU here, and the
  test cluster's two CPUs hold the other application's replicas);
* the model repository is read from the replica's environment, ``MODEL_REPOSITORY`` (the example hard-codes
  ``["/workspace/models"]``; Triton's tutorial reads ``S3_BUCKET_URL`` the same way): the test sets it with the
  deployment's ``runtime_env``.

The repository mirrors the example's (Triton's Conceptual_Guide Part 6): ``text_encoder`` (ONNX, onnxruntime),
``vae`` (ONNX here; a TensorRT plan there) and ``stable_diffusion`` (Python backend, ``prompt`` TYPE_STRING [1] ->
``generated_image`` TYPE_FP32 [-1, -1, -1], max_batch_size 8), which calls the other two through BLS as the real
pipeline does.  The "diffusion" is arithmetic on the prompt's bytes, so a test knows the exact image to expect.
"""

from __future__ import annotations

import os

import numpy
import numpy as np
from fastapi import FastAPI
from onnx import TensorProto, helper
from PIL import Image
from ray import serve

import tritium.tritonserver as tritonserver

from models import write_model, write_python_model

# -- the deployment: Ray's example, import redirected ----------------------------------------------------------

app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class TritonDeployment:
    def __init__(self):  # type: ignore[no-untyped-def]
        self._triton_server = tritonserver

        # NOTE: Each worker node needs to have access to this directory.
        # If you are using distributed multi-node setup, prefer to use
        # remote storage like S3 to save the model repository and use it.
        #
        # If triton server is not able to access this location,
        # the triton server will complain `failed to stat /workspace/models`.
        model_repository = [os.environ.get("MODEL_REPOSITORY", "/workspace/models")]

        self._triton_server = tritonserver.Server(
            model_repository=model_repository,
            model_control_mode=tritonserver.ModelControlMode.EXPLICIT,
            log_info=False,
        )
        self._triton_server.start(wait_until_ready=True)

    @app.get("/generate")
    def generate(self, prompt: str, filename: str = "generated_image.jpg") -> None:
        if not self._triton_server.model("stable_diffusion").ready():
            try:
                self._triton_server.load("text_encoder")
                self._triton_server.load("vae")
                self._stable_diffusion = self._triton_server.load("stable_diffusion")
                if not self._stable_diffusion.ready():
                    raise Exception("Model not ready")
            except Exception as error:
                print(f"Error can't load stable diffusion model, {error}")
                return

        for response in self._stable_diffusion.infer(inputs={"prompt": [[prompt]]}):
            generated_image = (
                numpy.from_dlpack(response.outputs["generated_image"])
                .squeeze()
                .astype(numpy.uint8)
            )

            image_ = Image.fromarray(generated_image)
            image_.save(filename)


# -- the model repository: a CPU stand-in for Stable Diffusion -------------------------------------------------

#: Tokens per prompt (CLIP's context length, as the real text encoder takes).
TOKENS = 77

STABLE_DIFFUSION = '''
import numpy as np
import triton_python_backend_utils as pb_utils

TOKENS = 77


def _call(model_name, tensor, output_name):
    """One BLS request to another model of the repository (as the real pipeline calls its encoder and VAE)."""
    response = pb_utils.InferenceRequest(
        model_name=model_name, inputs=[tensor], requested_output_names=[output_name]).exec()
    if response.has_error():
        raise pb_utils.TritonModelException(response.error().message())
    return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            prompts = pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy().reshape(-1)
            images = []
            for prompt in prompts:
                ids = np.zeros((1, TOKENS), np.int32)
                raw = np.frombuffer(bytes(prompt)[:TOKENS], np.uint8)
                ids[0, : raw.size] = raw
                hidden = _call("text_encoder", pb_utils.Tensor("input_ids", ids), "last_hidden_state")
                images.append(_call("vae", pb_utils.Tensor("latent_sample", hidden), "sample"))
            image = np.concatenate(images).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("generated_image", image)]))
        return responses
'''

STABLE_DIFFUSION_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "prompt" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "generated_image" data_type: TYPE_FP32 dims: [ -1, -1, -1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

TEXT_ENCODER_CONFIG = f"""
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "input_ids" data_type: TYPE_INT32 dims: [ {TOKENS} ] }} ]
output [ {{ name: "last_hidden_state" data_type: TYPE_FP32 dims: [ {TOKENS} ] }} ]
"""

VAE_CONFIG = f"""
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "latent_sample" data_type: TYPE_FP32 dims: [ {TOKENS} ] }} ]
output [ {{ name: "sample" data_type: TYPE_FP32 dims: [ {TOKENS}, {TOKENS}, 3 ] }} ]
"""


def _text_encoder_graph():  # type: ignore[no-untyped-def]
    """last_hidden_state = float(input_ids) / 2."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", TOKENS])
    hidden = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", TOKENS])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["ids_f", "half"], ["last_hidden_state"])]
    return helper.make_graph(nodes, "text_encoder", [ids], [hidden], [half])


def _vae_graph():  # type: ignore[no-untyped-def]
    """sample[b, y, x, c] = (2 latent[b, y] + 2 latent[b, x] + 85 c) mod 256: an image of the prompt's bytes."""
    latent = helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, ["batch", TOKENS])
    sample = helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", TOKENS, TOKENS, 3])
    inits = [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
             helper.make_tensor("rows", TensorProto.INT64, [2], [2, 3]),
             helper.make_tensor("cols", TensorProto.INT64, [2], [1, 3]),
             helper.make_tensor("channels", TensorProto.FLOAT, [1, 1, 1, 3], [0.0, 85.0, 170.0]),
             helper.make_tensor("modulus", TensorProto.FLOAT, [], [256.0])]
    nodes = [helper.make_node("Mul", ["latent_sample", "two"], ["tokens"]),
             helper.make_node("Unsqueeze", ["tokens", "rows"], ["y"]),
             helper.make_node("Unsqueeze", ["tokens", "cols"], ["x"]),
             helper.make_node("Add", ["y", "x"], ["yx"]),
             helper.make_node("Add", ["yx", "channels"], ["rgb"]),
             helper.make_node("Mod", ["rgb", "modulus"], ["sample"], fmod=1)]
    return helper.make_graph(nodes, "vae", [latent], [sample], inits)


def write_repository(repo: str) -> str:
    """The example's three models in ``repo``."""
    write_model(repo, "text_encoder", _text_encoder_graph(), config=TEXT_ENCODER_CONFIG)
    write_model(repo, "vae", _vae_graph(), config=VAE_CONFIG)
    write_python_model(repo, "stable_diffusion", STABLE_DIFFUSION, STABLE_DIFFUSION_CONFIG)
    return repo


def expected_image(prompt: str) -> np.ndarray:
    """The image the stand-in pipeline makes of ``prompt``, as the example saves it (uint8 [77, 77, 3])."""
    tokens = np.zeros(TOKENS, np.int64)
    raw = np.frombuffer(prompt.encode()[:TOKENS], np.uint8)
    tokens[: raw.size] = raw
    image = (tokens[:, None, None] + tokens[None, :, None] + np.array([0, 85, 170])) % 256
    return image.astype(np.uint8)

