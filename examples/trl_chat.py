"""FuseChat-style chat fusion with TRL: conversations rendered with each model's chat template,
teachers aligned per message, assistant-only labels, then TRL's SFTTrainer with the fusion loss
(FusionSFTTrainer: one forward per micro-batch).

    pip install "fusekernels[trl]"; python examples/trl_chat.py
"""
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig

from fusekernels.integration import FusionArguments
from fusekernels.integration.trl import FusionSFTTrainer
from fusekernels.pipeline import build_fusion_dataset
from fusekernels.tokenization.assets import load_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))


def main() -> None:
    student_tok = load_tokenizer("mistral-v1")
    teachers = [(tiny_llama(len(tok), seed), tok) for seed, tok in
                enumerate([load_tokenizer("gpt2"), load_tokenizer("qwen")], start=1)]
    questions = ["Who made the light?", "What was upon the face of the deep?", "What did God call the light?"]
    answers = ["God said, Let there be light: and there was light.", "Darkness was upon the face of the deep.",
               "God called the light Day, and the darkness he called Night."]
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                     for q, a in zip(questions, answers)] * 6
    data = build_fusion_dataset(conversations, student_tok, teachers, block_size=64, k=8, cache=False,
                                student_chat_template=CHATML, chat_templates=[CHATML, CHATML])
    print("columns:", data.column_names)   # labels: -100 outside the assistant turns
    trainer = FusionSFTTrainer(model=tiny_llama(len(student_tok), 0),
                               args=SFTConfig(tempfile.mkdtemp(), max_steps=3, per_device_train_batch_size=2,
                                              logging_steps=1, report_to="none", save_strategy="no",
                                              bf16=torch.cuda.is_available()),   # SFTConfig defaults to bf16
                               train_dataset=data, processing_class=student_tok,
                               fusion_args=FusionArguments(fusion="mince", loss_type="ce", lam=0.9))
    print(f"training loss {trainer.train().training_loss:.3f}")


if __name__ == "__main__":
    main()
