"""voicefw: CDRs from many operators -> canonical tables -> features -> flash-call model."""
